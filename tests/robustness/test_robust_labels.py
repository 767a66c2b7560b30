"""Fuzz corpus, label maps: a label file that does not follow its declared map is a clear per-case error.

One test per kind: a real file declared with the wrong convention, an unknown value in a real file, prediction
values the model's map does not know, negative and fractional label values, and malformed inline label maps
(a site-config error naming ``label_map``). ``test_label_errors_in_a_full_run_are_counted`` runs the CLI: the run
completes, each bad case is a failure in failures.csv, results.json and the report, and no case is lost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.evaluate import EvaluationSettings, evaluate_case
from audit.harmonize.checks import check_case
from audit.label_maps import get_label_map
from audit.ontology import remap_labels
from audit.records import CaseFailure
from audit.sites import SiteConfigError, load_site_config

VERT = "tptbox-cervical-mri/sub-mri_seg-vert_label-6_msk.nii.gz"
SUBREG = "tptbox-cervical-mri/sub-mri_seg-subreg_label-6_msk.nii.gz"
IMAGE = "tptbox-cervical-mri/sub-mri_label-6_T2w.nii.gz"
SETTINGS = EvaluationSettings(structures=("vertebral_body", "intervertebral_disc"), metrics=("dice",))


def save_like(reference: Path, array: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(array, nib.load(str(reference)).affine), str(path))
    return str(path)


def evaluate(reference: Path, prediction: str, reference_map: str = "tptbox_subregion", prediction_map: str = "spine_audit"):
    return evaluate_case("s/1", label_path=str(reference), prediction_path=prediction, reference_map=get_label_map(reference_map),
                         prediction_map=get_label_map(prediction_map), settings=SETTINGS, site="s")  # fmt: skip


def test_real_file_declared_with_the_wrong_convention(shared_data):
    """The TPTBox vertebra-instance file declared as a subregion file: its values 5-7, 105-106 and 205-207 are unknown."""
    result = check_case("s/1", str(shared_data / IMAGE), str(shared_data / VERT), get_label_map("tptbox_subregion"), site="s")
    (failure,) = result.failures
    assert failure.error_type == "UnknownLabelValuesError" and failure.stage == "harmonize"
    raw = np.asanyarray(nib.load(str(shared_data / VERT)).dataobj)
    unknown = [v for v in np.unique(raw).tolist() if v != 0]
    n_voxels = int(np.isin(raw, unknown).sum())
    assert f"label values {unknown} ({n_voxels} voxels) are not in label map 'tptbox_subregion'" in failure.error


def test_unknown_value_in_a_real_file_is_reported_not_zeroed(shared_data, tmp_path):
    """TPTBox Dens_axis (51) is not in the subregion map: the case fails, it is never silently background."""
    raw = np.asanyarray(nib.load(str(shared_data / SUBREG)).dataobj).copy()
    raw[raw == 41] = 51
    bad = save_like(shared_data / SUBREG, raw, tmp_path / "ref.nii.gz")
    out = evaluate(Path(bad), bad)
    assert isinstance(out, CaseFailure) and out.stage == "harmonize"
    assert "reference label values [51] are not in label map 'tptbox_subregion'" in out.error and f"{int((raw == 51).sum())} voxels" in out.error


def test_prediction_values_unknown_to_the_model_map(shared_data, tmp_path):
    canonical = remap_labels(np.asanyarray(nib.load(str(shared_data / SUBREG)).dataobj), get_label_map("tptbox_subregion")).array.copy()
    canonical[0, 0, 0] = 9
    out = evaluate(shared_data / SUBREG, save_like(shared_data / SUBREG, canonical, tmp_path / "pred.nii.gz"))
    assert isinstance(out, CaseFailure)
    assert "prediction label values [9] are not in the model's label map 'spine_audit'" in out.error


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.array([[[0, -1], [1, 2]]], dtype=np.int16), "negative label values found: [-1]"),
     (np.array([[[0, 0.5], [1, 2]]], dtype=np.float32), "holds non-integer label values")],
    ids=["negative", "fractional"],
)  # fmt: skip
def test_negative_or_fractional_reference_values(tmp_path, array, message):
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.repeat(array, 2, axis=0), np.eye(4)), str(ref))
    pred = tmp_path / "pred.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(pred))
    out = evaluate(ref, str(pred), reference_map="cspineseg")
    assert isinstance(out, CaseFailure) and message in out.error


@pytest.mark.parametrize(
    ("label_map", "message"),
    [({"one": "vertebral_body"}, "keys must be integer label values; got 'one'"),
     ({1: "vertebral_bodies"}, "unknown name 'vertebral_bodies'"),
     ({0: "vertebral_body"}, "label values must be positive integers; found 0"),
     ({"values": {1: "vertebral_body"}, "ignore": [1]}, "values [1] are both mapped and ignored"),
     ({"values": {1: "vertebral_body"}, "colour": "red"}, "allowed keys are ['values', 'ignore', 'name']"),
     ("tptbox_subregions", "unknown convention 'tptbox_subregions'")],
    ids=["key-not-int", "unknown-structure", "zero-value", "mapped-and-ignored", "unknown-key", "unknown-name"],
)  # fmt: skip
def test_malformed_label_map_is_a_site_config_error(tmp_path, label_map, message):
    with pytest.raises(SiteConfigError) as err:
        load_site_config({"name": "s", "format": "nifti_table", "root": str(tmp_path), "label_map": label_map})
    assert str(err.value).startswith("sites[s].label_map: ") and message in str(err.value)


def test_label_errors_in_a_full_run_are_counted(shared_data, tmp_path):
    root = tmp_path / "site"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    pred = tmp_path / "pred" / "s"
    pred.mkdir(parents=True)
    subreg = np.asanyarray(nib.load(str(shared_data / SUBREG)).dataobj)
    canonical = remap_labels(subreg, get_label_map("tptbox_subregion")).array
    cases = {"good": (SUBREG, canonical), "wrong-map": (VERT, canonical), "bad-pred": (SUBREG, np.where(canonical == 1, 7, canonical).astype(np.uint8))}
    for case, (label, prediction) in cases.items():
        shutil.copy(shared_data / IMAGE, root / "images" / f"{case}.nii.gz")
        shutil.copy(shared_data / label, root / "labels" / f"{case}.nii.gz")
        save_like(shared_data / SUBREG, prediction, pred / f"{case}.nii.gz")
    pd.DataFrame({"case_id": list(cases), "patient_id": ["p1", "p2", "p3"]}).to_csv(root / "metadata.csv", index=False)
    protocol = {
        "name": "label errors", "version": "1",
        "sites": [{"name": "s", "format": "nifti_table", "root": str(root), "label_map": "tptbox_subregion"}],
        "model": {"name": "copy", "kind": "predictions", "path": str(tmp_path / "pred"), "options": {"pattern": "{site}/{local_id}.nii.gz"},
                  "labels": {1: "vertebral_body", 2: "intervertebral_disc", 3: "spinal_canal", 4: "spinal_cord"}},
        "structures": ["vertebral_body", "intervertebral_disc"], "metrics": {"names": ["dice"]}, "subgroups": {"columns": ["site"]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
    }  # fmt: skip
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "protocol.yaml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    failures = pd.read_csv(out / "failures.csv").set_index("case_id")
    assert sorted(failures.index) == ["s/bad-pred", "s/wrong-map"]
    assert failures.loc["s/wrong-map", "error_type"] == "UnknownLabelValuesError"
    assert "prediction label values [7]" in failures.loc["s/bad-pred", "error"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["case_id"]) == {"s/good", "s/bad-pred", "s/wrong-map"}  # nothing lost
    assert (metrics.loc[metrics["case_id"] != "s/good", "status"] == "failed").all()
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["n_failed_cases"] == 2 and results["data"]["n_cases"] == 3
    assert "Failed cases (2)" in (out / "report.html").read_text()
