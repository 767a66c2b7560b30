"""The protocol's execution section: parsing, field-named errors, left out of the sha256; SLURM translation."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from audit.execution import ExecutionSettings, SlurmSettings, open_executor
from audit.execution.distributed import JOBQUEUE_INSTALL_HINT, slurm_cluster_kwargs, start_slurm_cluster
from audit.protocol import ProtocolError, protocol_from_dict


def minimal_protocol(**extra) -> dict:
    return {"name": "p", "version": "1", "model": {"kind": "torchscript", "path": "m.pt"}, "structures": ["vertebral_body"],
            "sites": [{"name": "s", "format": "nifti_table", "root": "."}], **extra}


def test_execution_section_parses_into_settings():
    p = protocol_from_dict(minimal_protocol(execution={"scheduler": "tcp://10.0.0.5:8786"}))
    assert p.execution == ExecutionSettings(scheduler="tcp://10.0.0.5:8786")
    p = protocol_from_dict(minimal_protocol(execution={"cluster": "slurm", "workers": 8, "slurm": {"queue": "gpu", "gpus": 1, "job_extra_directives": ["--qos=high"]}}))
    assert p.execution.slurm == SlurmSettings(queue="gpu", gpus=1, job_extra_directives=("--qos=high",))


def test_execution_settings_do_not_change_the_protocol_hash():
    base = protocol_from_dict(minimal_protocol())
    on_cluster = protocol_from_dict(minimal_protocol(execution={"scheduler": "tcp://10.0.0.5:8786", "workers": 64}))
    assert base.sha256 == on_cluster.sha256
    other_seed = protocol_from_dict(minimal_protocol(statistics={"seed": 1}))
    assert other_seed.sha256 != base.sha256  # the hash still sees what is computed


@pytest.mark.parametrize(
    ("execution", "message"),
    [
        ({"scheduler": "10.0.0.5:8786"}, r"execution.scheduler: expected a dask scheduler address such as 'tcp://host:8786' .*found '10.0.0.5:8786'"),
        ({"cluster": "kubernetes"}, r"execution.cluster: allowed values are \['processes', 'dask', 'slurm'\]; found 'kubernetes'"),
        ({"workers": 0}, r"execution.workers: must be at least 1; found 0"),
        ({"memory_limit": "lots"}, r"execution.memory_limit: expected 'auto' or a size such as '2GiB'; found 'lots'"),
        ({"slurm": {"walltime": "2h"}}, r"execution.slurm.walltime: expected \[D-\]HH:MM\[:SS\] such as '02:00:00'; found '2h'"),
        ({"slurm": {"gpus": 2, "processes": 3}}, r"execution.slurm.processes: with gpus=2 use one worker per GPU \(2\); found 3"),
        ({"slurm": {"job_extra_directives": ["--qos=a\n#SBATCH --x"]}}, r"job_extra_directives\[0\]: one directive per entry, no line breaks"),
        ({"slurm": {"partition": "gpu"}}, r"execution.slurm.partition: unknown key"),
    ],
    ids=["address", "cluster", "workers", "memory", "walltime", "gpu-processes", "newline", "unknown-key"],
)
def test_bad_execution_settings_name_the_field(execution, message):
    with pytest.raises(ProtocolError, match=message):
        protocol_from_dict(minimal_protocol(execution=execution))


def test_slurm_settings_translate_to_jobqueue_arguments():
    settings = ExecutionSettings(cluster="slurm", slurm=SlurmSettings(queue="gpu", account="radiology", cores=8, memory="32GiB", gpus=2,
                                                                      walltime="04:00:00", job_extra_directives=("--qos=high",)))
    assert slurm_cluster_kwargs(settings) == {
        "cores": 8, "memory": "32GiB", "processes": 2, "walltime": "04:00:00",
        "job_extra_directives": ["--qos=high", "--gres=gpu:2"], "job_script_prologue": [],
        "worker_extra_args": ["--resources", "GPU=1"], "queue": "gpu", "account": "radiology",
    }
    cpu = slurm_cluster_kwargs(ExecutionSettings(cluster="slurm"))
    assert cpu["processes"] == 1 and cpu["worker_extra_args"] == [] and "queue" not in cpu


def test_slurm_job_script_from_dask_jobqueue_carries_the_settings():
    jobqueue = pytest.importorskip("dask_jobqueue")
    settings = ExecutionSettings(cluster="slurm", slurm=SlurmSettings(queue="gpu", account="rad", cores=8, memory="32GiB", gpus=2, walltime="04:00:00"))
    kwargs = slurm_cluster_kwargs(settings)
    # the job script is rendered without a scheduler or a SLURM installation
    script = jobqueue.slurm.SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kwargs).job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -A rad", "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=8"):
        assert line in script
    assert "--nworkers 2" in script and "--resources GPU=1" in script


def test_missing_dask_jobqueue_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as when not installed
    with pytest.raises(ImportError, match="needs the optional package dask-jobqueue; install it with `pip install dask-jobqueue`"):
        start_slurm_cluster(ExecutionSettings(cluster="slurm"), 1)
    assert "pip install dask-jobqueue" in JOBQUEUE_INSTALL_HINT


def test_open_executor_rejects_invalid_settings_before_starting_anything():
    with pytest.raises(ValueError, match="execution.threads_per_worker: must be at least 1; found 0"):
        open_executor(dataclasses.replace(ExecutionSettings(), threads_per_worker=0))
