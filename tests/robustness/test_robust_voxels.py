"""Fuzz corpus, voxel and geometry kinds: each bad case is a per-case data error in `sites check` and in the run.

One run of the real CLI on a tiny two-site cohort (10 good cases, perfect predictions) with one case of each
kind planted; every kind must be refused before scoring (never scored against the model), recorded in
failures.csv with a message naming the problem, kept in the manifest and metric table (status failed), named
in the report, and counted in results.json, while the good cases are scored (Dice 1 for perfect predictions).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.sites import check_site, load_site_config
from robust_cohort import AFFINE, GOOD_PER_SITE, SHAPE, SITES, assert_counted, build_cohort, image_for, plant, reference_labels, run_outputs, save, write_protocol


def nan_voxels(path: Path) -> None:
    image = image_for(reference_labels(5), 5)
    image[3, 3, 3] = np.nan
    save(image, path)


def inf_voxels(path: Path) -> None:
    image = image_for(reference_labels(6), 6)
    image[0, :, 0] = np.inf
    save(image, path)


def no_sform_no_qform(path: Path) -> None:
    nib.save(nib.Nifti1Image(reference_labels(7), None), path)  # no affine: nibabel writes sform_code = qform_code = 0


def nan_affine(path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_sform(AFFINE, code=1)
    header["srow_y"][1] = np.nan  # sform_code 1: the file claims a geometry it does not have
    nib.save(nib.Nifti1Image(image_for(reference_labels(8), 8), None, header=header), path)


def non_integer_label(path: Path) -> None:
    save(reference_labels(9).astype(np.float32) * 0.5, path)  # values 0, 0.5, 1: probabilities, not labels


def label_2d(path: Path) -> None:
    save(reference_labels(10)[:, :, 2], path)


def label_4d(path: Path) -> None:
    save(np.stack([reference_labels(11)] * 3, axis=-1), path)


def empty_reference(path: Path) -> None:
    save(np.zeros(SHAPE, np.uint8), path)


#: kind -> (which file the writer replaces, writer, error type, words the message must contain)
KINDS = {
    "nan-voxels": ("image", nan_voxels, "ImageDataError", "1 of 960 voxels are NaN or Inf"),
    "inf-voxels": ("image", inf_voxels, "ImageDataError", "10 of 960 voxels are NaN or Inf"),
    "no-sform-qform": ("label", no_sform_no_qform, "ImageDataError", "no world geometry (sform_code=0 and qform_code=0)"),
    "nan-affine": ("image", nan_affine, "ImageDataError", "affine from the sform (srow_x/y/z) holds NaN"),
    "non-integer-label": ("label", non_integer_label, "ImageDataError", "holds non-integer label values (90 voxels, e.g. 0.5"),
    "label-2d": ("label", label_2d, "ImageDataError", "expected a 3-D volume; header declares 2-D shape (12, 10)"),
    "label-4d": ("label", label_4d, "ImageDataError", "expected a 3-D volume; header declares 4-D or higher shape (12, 10, 8, 3)"),
    "empty-reference": ("label", empty_reference, "EmptyReferenceError", "reference segmentation is empty"),
}


def case_of(kind: str) -> str:
    return f"{SITES[1]}/{kind}"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> dict:
    """The cohort with every kind planted at site-B, one CLI run, and `sites check` of site-B."""
    cohort = build_cohort(tmp_path_factory.mktemp("robust-voxels") / "cohort")
    for i, (kind, (which, writer, _, _)) in enumerate(KINDS.items()):
        plant(cohort, SITES[1], kind, seed=50 + i, **{which: writer})
    protocol = write_protocol(cohort)
    run = cohort / "run"
    result = CliRunner().invoke(app, ["run", str(protocol), "--out", str(run), "--quiet"])
    site_config = cohort / "site-B.yaml"
    site_config.write_text(yaml.safe_dump({"name": SITES[1], "format": "nifti_table", "root": SITES[1], "label_map": "spine_audit"}))
    check = CliRunner().invoke(app, ["sites", "check", str(site_config)])
    report = check_site(load_site_config(site_config))  # what the command printed, as data
    return {"result": result, "outputs": run_outputs(run) if result.exit_code == 0 else None, "check": check, "report": report}


@pytest.mark.parametrize("kind", list(KINDS), ids=list(KINDS))
def test_each_bad_kind_is_a_counted_per_case_error(fuzzed, kind):
    assert fuzzed["result"].exit_code == 0, fuzzed["result"].output + repr(fuzzed["result"].exception)
    _, _, error_type, message = KINDS[kind]
    assert_counted(fuzzed["outputs"], case_of(kind), stage="harmonize", error_type=error_type, message=message)
    assert fuzzed["check"].exit_code == 1
    found = [f for f in fuzzed["report"].failures if f.case_id == case_of(kind)]
    assert [f.error_type for f in found] == [error_type] and message in found[0].error and found[0].stage == "harmonize"
    assert case_of(kind) in fuzzed["report"].render()


def test_the_run_completes_and_nothing_is_lost(fuzzed):
    outputs = fuzzed["outputs"]
    n_good = GOOD_PER_SITE * len(SITES)
    assert len(outputs["manifest"]) == n_good + len(KINDS)
    assert outputs["results"]["data"]["n_failed_cases"] == len(KINDS)
    assert set(outputs["failures"]["case_id"]) == {case_of(k) for k in KINDS}
    scored = outputs["metrics"][outputs["metrics"]["status"] != "failed"]
    assert scored["case_id"].nunique() == n_good
    np.testing.assert_allclose(scored["value"], 1.0, atol=0)  # perfect predictions of the good cases: Dice exactly 1
    assert f"Failed cases ({len(KINDS)})" in outputs["report"]
