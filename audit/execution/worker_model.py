"""One model per dask worker: a worker plugin that loads it once, and the task that predicts with it.

A worker that replaces a dead one runs the plugin's ``setup`` again, so every worker that takes inference
tasks holds exactly one loaded model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = ["MODEL_PLUGIN", "ModelPlugin", "predict_on_worker"]

#: Name under which the plugin is registered on every worker.
MODEL_PLUGIN = "spine-audit-model"


class ModelPlugin(WorkerPlugin):
    """Loads ``spec`` onto ``device`` when a worker starts; tasks use :attr:`model`.

    Parameters
    ----------
    spec : audit.inference.ModelSpec
        What to load (paths as the workers see them).
    device : str
        ``"auto"`` picks the worker's GPU when it has one.
    """

    name = MODEL_PLUGIN

    def __init__(self, spec: Any, device: str) -> None:
        self.spec = spec
        self.device = device
        self.model: Any = None
        self.loads = 0

    def setup(self, worker: Any) -> None:
        import torch

        from audit.inference import load_model

        # torch threads = the worker's dask threads: two 1-thread workers on 2 cores must not spin 4 threads
        torch.set_num_threads(max(1, int(getattr(worker, "nthreads", 1) or 1)))
        self.model = load_model(self.spec, device=self.device)
        self.loads += 1
        logger.info("worker %s loaded model %s on %s", getattr(worker, "address", "?"), self.model.sha256[:12], self.model.device)

    def teardown(self, worker: Any) -> None:
        self.model = None


def predict_on_worker(case: Any, *, cache_dir: str, limits: Any = None) -> Any:
    """Predict one case with this worker's model (prediction cache honoured).

    Returns an :class:`~audit.inference.InferenceResult`, or a :class:`~audit.records.CaseFailure` for a bad case.
    """
    from audit.inference import predict_case

    plugin = get_worker().plugins[MODEL_PLUGIN]
    try:
        return predict_case(plugin.model, case, cache_dir=Path(cache_dir), limits=limits)
    except Exception as exc:  # one bad case must never stop the audit
        logger.warning("inference failed for %s: %s: %s", case.case_id, type(exc).__name__, exc)
        return CaseFailure.from_exception(case.case_id, "inference", exc, site=case.site)
