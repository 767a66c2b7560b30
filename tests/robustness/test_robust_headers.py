"""Fuzz corpus, hostile headers: huge declared shapes and gzip bombs fail one case, before allocation.

The budget (protocol ``limits``) is checked from the header, so a 64-byte file declaring 30000^3 voxels, or a
small gzip stream that honestly declares a volume over the budget, fails its case without allocating the
volume; a stream whose header declares a small volume but holds much more is cut off one byte past the
declared size. Peak memory of the reader is measured with tracemalloc (numpy and bytes allocations are traced).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.harmonize.limits import ImageTooLargeError, ReadLimits
from audit.harmonize.loading import CorruptImageError, load_nifti
from robust_cohort import GOOD_PER_SITE, SITES, assert_counted, build_cohort, header_only_gz, honest_gzip_bomb, lying_gzip_bomb, plant, run_outputs, write_protocol

#: The run's budget: 2e6 voxels and 4 MiB per file (the cohort's files have 960 voxels).
LIMITS = {"max_voxels": 2_000_000, "max_memory_mb": 4}
#: 160^3 uint8 = 4.1e6 voxels (over max_voxels), 3.9 MiB declared; compresses to a few kB.
BOMB_SHAPE = (160, 160, 160)
#: MiB of zeros hidden after the declared data of a small label.
TRAILING_MB = 64


def _writer(data: bytes):
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


#: kind -> (file replaced, content, stage, error type, words the message must contain)
KINDS = {
    "huge-shape-image": ("image", header_only_gz((30000, 30000, 30000)), "harmonize", "ImageTooLargeError",
                         "header declares shape (30000, 30000, 30000) = 2.7e+13 voxels; limits.max_voxels is 2000000"),
    "huge-shape-label": ("label", header_only_gz((30000, 30000, 30000), dtype="int16"), "harmonize", "ImageTooLargeError",
                         "limits.max_voxels is 2000000"),
    "honest-bomb-image": ("image", honest_gzip_bomb(BOMB_SHAPE), "harmonize", "ImageTooLargeError",
                          "header declares shape (160, 160, 160) = 4.096e+06 voxels"),
    "lying-bomb-label": ("label", lying_gzip_bomb(TRAILING_MB), "harmonize", "CorruptImageError",
                         "holds more data than its header declares"),
    "lying-bomb-prediction": ("prediction", lying_gzip_bomb(TRAILING_MB), "inference", "CorruptImageError",
                              "prediction"),
}


def case_of(kind: str) -> str:
    return f"{SITES[0]}/{kind}"


def test_a_64_byte_file_declares_30000_cubed():
    data = KINDS["huge-shape-image"][1]
    assert len(data) <= 64, len(data)
    with pytest.raises(ImageTooLargeError, match=r"2\.7e\+13 voxels"):
        load_nifti(data, name="huge.nii.gz")


@pytest.mark.parametrize(
    ("kind", "error"), [("honest-bomb-image", ImageTooLargeError), ("lying-bomb-label", CorruptImageError)], ids=["honest", "lying"]
)
def test_gzip_bombs_are_refused_within_a_small_memory_peak(kind, error):
    data = KINDS[kind][1]
    assert len(data) < 200_000  # compressed: a ~64 MiB (lying) or 3.9 MiB (honest) stream in under 200 kB
    tracemalloc.start()
    try:
        with pytest.raises(error):
            load_nifti(data, name=f"{kind}.nii.gz", limits=ReadLimits(**LIMITS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # bounded by one 4 MiB read block, never the 64 MiB stream


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> dict:
    cohort = build_cohort(tmp_path_factory.mktemp("robust-headers") / "cohort")
    for i, (kind, (which, data, *_)) in enumerate(KINDS.items()):
        plant(cohort, SITES[0], kind, seed=70 + i, **{which: _writer(data)})
    run = cohort / "run"
    result = CliRunner().invoke(app, ["run", str(write_protocol(cohort, limits=LIMITS)), "--out", str(run), "--quiet"])
    return {"result": result, "outputs": run_outputs(run) if result.exit_code == 0 else None}


@pytest.mark.parametrize("kind", list(KINDS), ids=list(KINDS))
def test_each_hostile_header_is_a_counted_per_case_error(fuzzed, kind):
    assert fuzzed["result"].exit_code == 0, fuzzed["result"].output + repr(fuzzed["result"].exception)
    _, _, stage, error_type, message = KINDS[kind]
    assert_counted(fuzzed["outputs"], case_of(kind), stage=stage, error_type=error_type, message=message)


def test_the_run_completes_and_nothing_is_lost(fuzzed):
    outputs = fuzzed["outputs"]
    assert len(outputs["manifest"]) == GOOD_PER_SITE * len(SITES) + len(KINDS)
    assert outputs["results"]["data"]["n_failed_cases"] == len(KINDS)
    assert set(outputs["failures"]["case_id"]) == {case_of(k) for k in KINDS}
    assert outputs["results"]["protocol"]["limits"] == {"max_voxels": 2_000_000, "max_memory_mb": 4.0}
