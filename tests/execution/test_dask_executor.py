"""dask.distributed execution on a 2-worker LocalCluster (worker processes, 1 GiB each).

The cluster is started once for the module (about 1 s). The killed-worker tests kill a worker process with
SIGKILL from inside a task, as an out-of-memory killer would; the nanny restarts it and the scheduler reruns
the tasks it held.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from audit.evaluate import EvaluationSettings, evaluate_case, metric_names
from audit.execution import ExecutionSettings, open_executor
from audit.metrics import EmptyPolicy
from audit.sites import resolve_sites
from audit.protocol import load_protocol
from audit.runfolder import RunFolder

from execution_testlib import always_kill_worker, kill_once_then, kill_worker_once, square_plus, square_with_pid

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def dask_executor():
    with open_executor(ExecutionSettings(cluster="dask", memory_limit="1GiB"), workers=2) as ex:
        assert ex.kind == "dask" and ex.workers == 2
        yield ex


def test_dask_map_equals_serial_in_input_order(dask_executor):
    jobs = [((i,), {"offset": 3}) for i in range(30)]
    assert list(dask_executor.map(square_plus, jobs)) == list(map(lambda j: square_plus(*j[0], **j[1]), jobs))


def test_both_workers_take_work(dask_executor):
    pids = {pid for _, pid in dask_executor.map(square_with_pid, [((i,), {}) for i in range(40)])}
    assert len(pids) >= 2


def test_killed_worker_tasks_rerun_and_results_equal_serial(dask_executor, tmp_path):
    marker = tmp_path / "killed"
    jobs = [((i,), {"marker": str(marker), "victim": 5}) for i in range(30)]
    out = list(dask_executor.map(kill_worker_once, jobs))
    assert marker.exists(), "the victim task never ran, so no worker was killed"
    assert [v for v, _ in out] == [i * i for i in range(30)]


def test_connecting_to_a_running_scheduler_by_address(dask_executor):
    address = dask_executor.client.scheduler.address
    with open_executor(ExecutionSettings(scheduler=address)) as joined:
        assert joined.kind == "dask" and joined.cluster is None  # joined, not started: closing leaves it running
        assert list(joined.map(square_plus, [((2,), {})])) == [4]
    assert list(dask_executor.map(square_plus, [((3,), {})])) == [9]


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(OSError, match=r"execution.scheduler: cannot reach the dask scheduler at 'tcp://127.0.0.1:9'"):
        from audit.execution.distributed import DaskExecutor

        DaskExecutor.connect("tcp://127.0.0.1:9", timeout=1)


def _metric_jobs(run_dir: Path):
    """The metric stage's jobs for the first six cases of a finished run folder (arguments as the pipeline builds them)."""
    from audit.inference import load_model, model_spec_from_dict

    protocol = load_protocol(run_dir / "protocol.yaml")
    site_maps = {c.name: c.label_map for c in resolve_sites(protocol, run_dir / "cohort")}
    model = load_model(model_spec_from_dict(protocol.model, base_dir=Path(protocol.base_dir)), device="cpu")
    names = metric_names(protocol.metrics.names, protocol.metrics.nsd_tolerances_mm)
    settings = EvaluationSettings(
        structures=protocol.structures, metrics=names, empty_policy=EmptyPolicy(missed_distance=protocol.metrics.missed_distance)
    )
    manifest = RunFolder(run_dir).read_manifest().head(6)  # absolute paths; six cases keep the test quick
    return [
        (
            (r.case_id,),
            dict(label_path=r.label_path, prediction_path=r.prediction_path, reference_map=site_maps[r.site],
                 prediction_map=model.label_map, settings=settings, site=r.site),
        )
        for r in manifest.itertuples(index=False)
    ], model


def test_case_metrics_with_a_worker_killed_mid_run_equal_the_serial_run(dask_executor, demo_run, tmp_path):
    run_dir, _ = demo_run
    jobs, _ = _metric_jobs(run_dir)
    serial = pd.concat([evaluate_case(*a, **k) for a, k in jobs], ignore_index=True)
    marker = str(tmp_path / "killed")
    killed = [(("evaluate_case", *a), {**k, "marker": marker}) if i == 3 else (a, k) for i, (a, k) in enumerate(jobs)]
    fns = {3: kill_once_then}
    out = list(dask_executor.map(_dispatch, [((fns.get(i), a, k), {}) for i, (a, k) in enumerate(killed)]))
    assert Path(marker).exists()
    pd.testing.assert_frame_equal(pd.concat(out, ignore_index=True), serial)  # bit-identical, same order


def _dispatch(fn, args, kwargs):
    return (fn or evaluate_case)(*args, **kwargs)


def test_inference_loads_one_model_per_worker_and_equals_the_local_runner(dask_executor, demo_run, tmp_path):
    import nibabel as nib
    import numpy as np

    from audit.execution.inference import run_inference_on
    from audit.execution.worker_model import MODEL_PLUGIN
    from audit.inference import InferenceCase, InferenceResult

    run_dir, _ = demo_run
    _, model = _metric_jobs(run_dir)
    manifest = RunFolder(run_dir).read_manifest().head(4)
    cases = [InferenceCase(r.case_id, r.image_path, r.label_path, r.site) for r in manifest.itertuples(index=False)]
    out = list(run_inference_on(dask_executor, model, cases, cache_dir=tmp_path / "predictions", device="cpu"))
    assert [r.case_id for r in out] == list(manifest["case_id"]) and all(isinstance(r, InferenceResult) for r in out)
    for r, local in zip(out, manifest["prediction_path"]):
        np.testing.assert_array_equal(np.asarray(nib.load(r.prediction_path).dataobj), np.asarray(nib.load(local).dataobj))
    loads = dask_executor.client.run(lambda dask_worker: dask_worker.plugins[MODEL_PLUGIN].loads)
    assert sorted(loads.values()) == [1, 1]  # each worker loaded the model exactly once for four cases


def _set_allowed_failures(n: int, dask_scheduler=None) -> int:
    old, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
    return old


def test_task_that_keeps_killing_workers_becomes_an_error_record(dask_executor):
    client = dask_executor.client
    old = client.run_on_scheduler(_set_allowed_failures, 0)  # give up on the first lost worker
    try:
        # one job alone: with allowed-failures 0, a job queued on the same worker would be lost with it
        out = list(dask_executor.map(always_kill_worker, [((1,), {})], on_error=lambda i, job, exc: type(exc).__name__))
    finally:
        client.run_on_scheduler(_set_allowed_failures, old)
    assert out == ["KilledWorker"]
    assert list(dask_executor.map(square_plus, [((i,), {}) for i in range(4)])) == [0, 1, 4, 9]  # the cluster goes on
