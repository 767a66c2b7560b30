"""Local execution (serial and process pool) keeps input order, equals the serial result and survives a killed worker."""

from __future__ import annotations

import pytest

from audit.execution import ExecutionSettings, ProcessExecutor, SerialExecutor, WorkerLostError, map_cases, open_executor
from audit.execution.local import guided_chunksize

from execution_testlib import always_kill_worker, kill_worker_once, raise_for_odd, square_plus, unpicklable_result_for_two


def test_process_pool_matches_serial_in_input_order():
    jobs = [((i,), {"offset": 1}) for i in range(20)]
    serial = list(map_cases(square_plus, jobs, workers=1))
    parallel = list(map_cases(square_plus, jobs, workers=2))
    assert serial == parallel == [i * i + 1 for i in range(20)]


@pytest.mark.parametrize(("n_jobs", "chunksize"), [(23, 1), (23, 4), (101, 3), (101, 4), (101, 7), (101, 50)], ids=lambda v: str(v))
def test_chunked_pool_yields_serial_results_in_input_order(n_jobs, chunksize):
    jobs = [((i,), {"offset": 3}) for i in range(n_jobs)]  # 23, 101: no chunk size here divides them
    with ProcessExecutor(2, chunksize=chunksize) as ex:
        assert list(ex.map(square_plus, iter(jobs))) == list(map_cases(square_plus, jobs, workers=1))


def test_chunks_shrink_towards_the_end():
    # 2 workers, at most 4 per chunk: remaining // 8, between 1 and 4 (hand-checked)
    assert [guided_chunksize(n, 2, 4) for n in (1000, 32, 31, 16, 15, 8, 7, 0)] == [4, 4, 3, 2, 1, 1, 1, 1]
    assert [guided_chunksize(n, 4, 8) for n in (64, 63, 16)] == [4, 3, 1]


@pytest.mark.parametrize("chunksize", [0, -1, 1.5, True], ids=["zero", "negative", "float", "bool"])
def test_chunksize_must_be_a_positive_integer(chunksize):
    with pytest.raises(ValueError, match=f"chunksize: must be a positive integer; found {chunksize!r}"):
        ProcessExecutor(2, chunksize=chunksize)


def test_a_result_that_cannot_travel_back_fails_only_its_own_job():
    # 40 jobs: the first chunk is [0, 1, 2, 3]; it fails as a whole (job 2's result cannot be pickled) and its jobs
    # are rerun one by one
    errors = []

    def record(i, job, exc):
        errors.append(i)
        return "error"

    with ProcessExecutor(2, chunksize=4) as ex:
        out = list(ex.map(unpicklable_result_for_two, [((i,), {}) for i in range(40)], on_error=record))
    assert out == [0, 1, "error", *range(3, 40)]
    assert errors == [2]


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers: must be at least 1; found 0"):
        list(map_cases(square_plus, [], workers=0))


def test_open_executor_picks_serial_for_one_worker_and_a_pool_for_more():
    with open_executor(ExecutionSettings(), workers=1) as one, open_executor(ExecutionSettings(workers=2), workers=1) as two:
        assert isinstance(one, SerialExecutor) and isinstance(two, ProcessExecutor)
        assert two.workers == 2  # the protocol's workers win over the command line's


def test_killed_pool_worker_reruns_its_cases_and_results_equal_serial(tmp_path):
    jobs = [((i,), {"marker": str(tmp_path / "killed"), "victim": 7}) for i in range(24)]
    with ProcessExecutor(2) as ex:
        out = list(ex.map(kill_worker_once, jobs))
    assert (tmp_path / "killed").exists(), "the victim job never ran, so no worker was killed"
    assert [v for v, _ in out] == [i * i for i in range(24)]


def test_a_job_that_always_kills_its_worker_becomes_an_error_record_after_max_attempts():
    seen = []

    def record(i, job, exc):
        seen.append((i, type(exc).__name__))
        return "lost"

    with ProcessExecutor(2, max_attempts=2, chunksize=4) as ex:
        out = list(ex.map(always_kill_worker, [((i,), {}) for i in range(40)], on_error=record))
    # job 1 is lost for good; its chunk-mates (first chunk [0, 1, 2, 3]) and every other job in flight were rerun
    # alone and succeeded
    assert out == [0, "lost", *range(2, 40)]
    assert seen == [(1, "WorkerLostError")]


def test_without_on_error_a_lost_job_raises():
    with ProcessExecutor(2, max_attempts=1) as ex, pytest.raises(WorkerLostError, match="job 1: a worker process died"):
        list(ex.map(always_kill_worker, [((i,), {}) for i in range(3)]))


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "processes"])
def test_on_error_replaces_a_raising_job_in_place(workers):
    out = list(map_cases(raise_for_odd, [((i,), {}) for i in range(5)], workers=workers, on_error=lambda i, job, exc: str(exc)))
    assert out == [0, "odd value 1", 2, "odd value 3", 4]


def test_pool_inference_loads_one_model_per_process_and_equals_the_threaded_runner(tmp_path):
    import nibabel as nib
    import numpy as np

    from audit.execution.inference import run_inference_on
    from audit.inference import InferenceCase, InferenceResult, load_model, model_spec_from_dict
    from audit.synthetic import cohort_case_files, generate_cohort

    generate_cohort(tmp_path / "cohort", n_cases=4, seed=11)
    cases = [InferenceCase(cid, image, label, site=site) for cid, image, label, site in cohort_case_files(tmp_path / "cohort")]
    model = load_model(model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet"}, base_dir=tmp_path), device="cpu")
    with SerialExecutor() as serial, ProcessExecutor(2) as pool:
        local = list(run_inference_on(serial, model, cases, cache_dir=tmp_path / "a", device="cpu"))
        pooled = list(run_inference_on(pool, model, cases, cache_dir=tmp_path / "b", device="cpu"))
    assert all(isinstance(r, InferenceResult) for r in local + pooled)
    assert [r.case_id for r in pooled] == [c.case_id for c in cases]
    for a, b in zip(local, pooled):
        np.testing.assert_array_equal(np.asarray(nib.load(a.prediction_path).dataobj), np.asarray(nib.load(b.prediction_path).dataobj))
        assert a.prediction_path.name == b.prediction_path.name  # same cache key: same model, image and grid
