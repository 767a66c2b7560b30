"""Inference on an executor: one model per dask worker, loaded once, or the local threaded runner.

On dask, a worker plugin (:class:`audit.execution.worker_model.ModelPlugin`) loads the model when the worker starts (and again on a
worker that replaces a dead one); each task then predicts one case with that worker's model. Tasks ask
for the worker resource ``GPU=1`` when the cluster's workers advertise it (``execution.slurm.gpus``), so
one GPU worker runs one case at a time. Predictions land in the run's prediction cache, which the
workers must see under the same path (a shared file system). Locally the threaded prefetching runner of
:mod:`audit.inference.runner` runs in this process with the model already loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from audit.execution.base import Executor, Job
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = ["predict_in_process", "run_inference_on"]

#: Models loaded in this worker process, by (model sha256, device): one load per process.
_PROCESS_MODELS: dict[tuple[str, str], Any] = {}


def predict_in_process(case: Any, *, spec: Any, model_sha256: str, device: str, threads: int, cache_dir: str, limits: Any = None) -> Any:
    """Predict one case in a local pool worker with the model that process loaded on its first case.

    ``threads`` caps torch's intra-op threads per process. On 2 shared cores, two processes with one thread
    each ran the demo model at 4.9 cases/s per process while one process with two threads fell to 0.9 cases/s
    under load (threads spinning against each other; docs/performance.md).
    """
    from audit.inference import load_model, predict_case

    key = (model_sha256, device)
    try:
        model = _PROCESS_MODELS.get(key)
        if model is None:
            import torch

            torch.set_num_threads(threads)
            model = _PROCESS_MODELS[key] = load_model(spec, device=device)
        return predict_case(model, case, cache_dir=Path(cache_dir), limits=limits)
    except Exception as exc:  # one bad case must never stop the audit
        logger.warning("inference failed for %s: %s: %s", case.case_id, type(exc).__name__, exc)
        return CaseFailure.from_exception(case.case_id, "inference", exc, site=case.site)


def _gpu_workers(executor: Any) -> bool:
    info = executor.client.scheduler_info(n_workers=-1).get("workers", {})
    return any("GPU" in (w.get("resources") or {}) for w in info.values())


def run_inference_on(
    executor: Executor,
    model: Any,
    cases: Iterable[Any],
    *,
    cache_dir: Path,
    device: str,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    limits: Any = None,
) -> Iterator[Any]:
    """Predict every case on ``executor``, yielding results or failures in input order.

    Parameters
    ----------
    executor : Executor
        Dask workers and local pool processes load ``model.spec`` once each (local pool processes use one
        torch thread each: use as many workers as cores); a serial executor, or a pool with a GPU model,
        runs the threaded runner here.
    model : LoadedModel
        The model loaded in this process (its spec is what the workers load).
    cases : iterable of InferenceCase
    cache_dir : Path
        Prediction cache (shared with the workers).
    device : str
        Device string each worker loads the model onto.
    workers : int
        Prefetch threads of the local runner.
    progress : callable, optional
        ``progress(done, total)``.
    """
    from audit.inference import run_inference
    from audit.inference.cache import clean_temporary_files

    if executor.kind == "serial" or (executor.kind == "processes" and model.device.type != "cpu"):
        # one process: the threaded prefetching runner (a GPU is shared best by one process)
        yield from run_inference(model, cases, cache_dir=cache_dir, workers=workers, progress=progress, limits=limits)
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(cache_dir)
    todo = list(cases)
    resources = None
    if executor.kind == "dask":
        from audit.execution.worker_model import MODEL_PLUGIN, ModelPlugin, predict_on_worker

        executor.client.register_plugin(ModelPlugin(model.spec, device), name=MODEL_PLUGIN)  # type: ignore[attr-defined]
        resources = {"GPU": 1.0} if _gpu_workers(executor) else None
        fn: Callable[..., Any] = predict_on_worker
        jobs: list[Job] = [((case,), {"cache_dir": str(cache_dir), "limits": limits}) for case in todo]
    else:
        # one torch thread per forked process: safe after fork (no OpenMP pool inherited) and no oversubscription
        threads = 1
        fn = predict_in_process
        common = {"spec": model.spec, "model_sha256": model.sha256, "device": str(model.device), "threads": threads, "cache_dir": str(cache_dir), "limits": limits}
        jobs = [((case,), common) for case in todo]

    def lost(i: int, job: Job, exc: BaseException) -> CaseFailure:
        case = todo[i]
        return CaseFailure.from_exception(case.case_id, "inference", exc, site=case.site)

    for done, result in enumerate(executor.map(fn, jobs, on_error=lost, resources=resources), 1):
        if progress is not None:
            progress(done, len(todo))
        yield result
