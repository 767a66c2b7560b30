"""nnU-Net v2 model folders end to end, checked against nnU-Net's own file-based prediction.

The model folders are real (nnunetv2's PlainConvUNet, plans and checkpoints in the layout its trainer
writes), with seeded random weights. The oracle is nnunetv2's own ``predict_from_files_sequential``,
which reads the NIfTI with the reader named in the plans and writes its segmentation on the image's
grid: spine-audit's prediction on the reference grid must equal it voxel for voxel.

nnunetv2 is an optional extra. Without it these tests skip, unless ``SPINE_AUDIT_REQUIRE_NNUNET=1``
(set by ``.ci/run``), where a missing nnunetv2 is an error rather than a skip.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_testlib import REAL_CASES, blob_case, write_nnunet_model

from audit.inference import (
    InferenceCase,
    InferenceResult,
    load_model,
    model_spec_from_dict,
    nnunet_available,
    run_inference,
)

if not nnunet_available():
    if os.environ.get("SPINE_AUDIT_REQUIRE_NNUNET") == "1":
        raise RuntimeError("SPINE_AUDIT_REQUIRE_NNUNET=1 but nnunetv2 is not installed (pip install 'spine-audit[nnunet]')")
    pytest.skip("nnunetv2 is not installed (optional extra spine-audit[nnunet])", allow_module_level=True)

LABELS = {1: "vertebral_body", 2: "intervertebral_disc"}


def nnunet_spec(folder: Path, *, labels=None, **options) -> dict:
    return {"kind": "nnunet", "path": str(folder), "labels": LABELS if labels is None else labels, "options": options, "inference": {"device": "cpu"}}


def predict_with_spine_audit(spec: dict, case: InferenceCase, cache: Path) -> InferenceResult:
    model = load_model(model_spec_from_dict(spec, base_dir=cache))
    (out,) = list(run_inference(model, [case], cache_dir=cache))
    assert isinstance(out, InferenceResult), out
    return out


def predict_with_nnunet_itself(folder: Path, image: Path, out_dir: Path, folds: tuple[int, ...], *, mirroring: bool = True) -> np.ndarray:
    """nnU-Net's own path: its reader, its preprocessing, its export (weights loaded by nnunetv2 itself)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds, checkpoint_name="checkpoint_final.pth")
    out_dir.mkdir(parents=True)
    predictor.predict_from_files_sequential([[str(image)]], [str(out_dir / "pred")], save_probabilities=False, overwrite=True)
    return np.asarray(nib.load(out_dir / "pred.nii.gz").dataobj)


@pytest.mark.parametrize(
    ("reader", "axcodes", "folds"),
    [("SimpleITKIO", "PIR", (0,)), ("SimpleITKIO", "LPS", (0, 1)), ("NibabelIOWithReorient", "PIR", (0,)), ("NibabelIO", "PSR", ("all",))],
    ids=["sitk-PIR", "sitk-LPS-2folds", "nibabel-reorient-PIR", "nibabel-PSR-fold_all"],
)
def test_prediction_equals_nnunet_own_pipeline(tmp_path, reader, axcodes, folds):
    folder = write_nnunet_model(tmp_path / "model", reader=reader, folds=folds, seed=7)
    case = blob_case(tmp_path / "data", "blob", axcodes=axcodes, shape=(20, 16, 12), spacing=(1.0, 1.2, 3.0), seed=1)
    ours = predict_with_spine_audit(nnunet_spec(folder, folds=list(folds)), case, tmp_path / "cache")
    pred, ref = nib.load(ours.prediction_path), nib.load(case.label_path)
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)
    oracle = predict_with_nnunet_itself(folder, case.image_path, tmp_path / "oracle", folds)
    values, counts = np.unique(oracle, return_counts=True)
    assert len(values) >= 2 and counts.min() >= 0.01 * oracle.size, f"oracle segmentation is degenerate: {dict(zip(values, counts))}"
    np.testing.assert_array_equal(np.asarray(pred.dataobj), oracle)
    assert ours.info.get("device") in (None, "cpu")


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(REAL_CASES), ids=list(REAL_CASES))
def test_real_orientations_match_nnunet_and_land_on_the_reference_grid(name, shared_data, tmp_path):
    img_rel, lab_rel = REAL_CASES[name]
    case = InferenceCase(f"real/{name}", shared_data / img_rel, shared_data / lab_rel)
    folder = write_nnunet_model(tmp_path / "model", seed=11, spacing=(3.0, 3.0, 3.0))  # coarse: keeps the real volumes small
    ours = nib.load(predict_with_spine_audit(nnunet_spec(folder, use_mirroring=False), case, tmp_path / "cache").prediction_path)
    ref = nib.load(case.label_path)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours.affine, ref.affine)
    oracle = predict_with_nnunet_itself(folder, case.image_path, tmp_path / "oracle", (0,), mirroring=False)
    assert len(np.unique(oracle)) >= 2
    np.testing.assert_array_equal(np.asarray(ours.dataobj), oracle)


def test_reorienting_reader_gives_the_same_answer_for_any_stored_orientation(tmp_path):
    """With NibabelIOWithReorient, nnU-Net sees RAS whatever the file's orientation: PIR and RAS copies agree."""
    folder = write_nnunet_model(tmp_path / "model", reader="NibabelIOWithReorient", seed=3)
    pir = blob_case(tmp_path / "data", "pir", axcodes="PIR", seed=2)
    ras_dir = tmp_path / "ras"
    ras_dir.mkdir()
    ras_paths = []
    for path in (pir.image_path, pir.label_path):
        img = nib.load(path)
        ras = nib.as_closest_canonical(img)
        ras_paths.append(ras_dir / path.name)
        nib.save(ras, ras_paths[-1])
    ras = InferenceCase("site-X/ras", ras_paths[0], ras_paths[1], site="site-X")
    spec = nnunet_spec(folder, use_mirroring=False)
    out_pir = nib.load(predict_with_spine_audit(spec, pir, tmp_path / "cache").prediction_path)
    out_ras = nib.load(predict_with_spine_audit(spec, ras, tmp_path / "cache").prediction_path)
    back = nib.as_closest_canonical(out_pir)
    np.testing.assert_allclose(back.affine, out_ras.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(out_ras.dataobj))
    assert len(np.unique(np.asarray(out_ras.dataobj))) >= 2


def test_rerun_is_a_cache_hit(tmp_path):
    folder = write_nnunet_model(tmp_path / "model")
    case = blob_case(tmp_path / "data", "blob", seed=4)
    spec = nnunet_spec(folder, use_mirroring=False)
    first = predict_with_spine_audit(spec, case, tmp_path / "cache")
    second = predict_with_spine_audit(spec, case, tmp_path / "cache")
    assert not first.cached and second.cached
    np.testing.assert_array_equal(np.asarray(nib.load(first.prediction_path).dataobj), np.asarray(nib.load(second.prediction_path).dataobj))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    """weights_only=True: a checkpoint holding a class instance (code on unpickling) is not loaded."""
    folder = write_nnunet_model(tmp_path / "model", checkpoint_extra={"args": argparse.Namespace(lr=0.01)})
    with pytest.raises(ValueError, match=r"weights_only=True.*refuses to unpickle"):
        load_model(model_spec_from_dict(nnunet_spec(folder), base_dir=tmp_path), device="cpu")


def test_labels_must_agree_with_dataset_json(tmp_path):
    folder = write_nnunet_model(tmp_path / "model", labels={"background": 0, "vertebral_body": 1, "intervertebral_disc": 2, "spinal_cord": 3})
    with pytest.raises(ValueError, match=r"emits values \[3\] \(\['spinal_cord'\]\).*ignore"):
        load_model(model_spec_from_dict(nnunet_spec(folder), base_dir=tmp_path), device="cpu")
    with pytest.raises(ValueError, match=r"model.labels: values \[5\] are not outputs"):
        load_model(model_spec_from_dict(nnunet_spec(folder, labels={1: "vertebral_body", 5: "intervertebral_disc"}), base_dir=tmp_path), device="cpu")
    model = load_model(model_spec_from_dict(nnunet_spec(folder, labels={"values": LABELS, "ignore": [3]}), base_dir=tmp_path), device="cpu")
    assert model.label_map.ignore == frozenset({3})


def test_multichannel_model_is_refused(tmp_path):
    folder = write_nnunet_model(tmp_path / "model")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T1", "1": "T2"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"takes 2 input channels"):
        load_model(model_spec_from_dict(nnunet_spec(folder), base_dir=tmp_path), device="cpu")


def test_unsupported_reader_is_refused(tmp_path):
    folder = write_nnunet_model(tmp_path / "model", reader="NaturalImage2DIO")
    with pytest.raises(ValueError, match=r"image_reader_writer must be one of .*'NaturalImage2DIO'"):
        load_model(model_spec_from_dict(nnunet_spec(folder), base_dir=tmp_path), device="cpu")


def test_spine_audit_run_audits_an_nnunet_model_end_to_end(tmp_path):
    """`spine-audit run` with model.kind nnunet: every case segmented, scored and reported; provenance recorded."""
    import pandas as pd
    import yaml
    from typer.testing import CliRunner

    from audit.cli import app

    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "labels").mkdir()
    rows = []
    for i, axcodes in enumerate(("PIR", "LPS", "RAS", "PSR")):
        case = blob_case(tmp_path / "raw", f"c{i}", axcodes=axcodes, seed=20 + i)
        case.image_path.rename(site / "images" / f"c{i}.nii.gz")
        case.label_path.rename(site / "labels" / f"c{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "manufacturer": "SIEMENS", "field_strength": 3, "age": 40 + i, "sex": "FM"[i % 2]})
    pd.DataFrame(rows).to_csv(site / "metadata.csv", index=False)
    folder = write_nnunet_model(tmp_path / "model", seed=5)
    protocol = {
        "name": "nnU-Net audit",
        "version": "1",
        "sites": [{"name": "blobs", "format": "nifti_table", "root": str(site), "label_map": {1: "vertebral_body"}}],
        "model": {"name": "tiny-nnunet", **nnunet_spec(folder, use_mirroring=False)},
        "structures": ["vertebral_body"],
        "metrics": {"names": ["dice"]},
        "subgroups": {"columns": ["site", "sex"]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
        "acceptance": [{"id": "dice", "metric": "dice", "threshold": 0.5}],
    }
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "protocol.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"]["kind"] == "nnunet" and len(results["model"]["sha256"]) == 64
    assert results["data"]["n_cases"] == 4 and results["data"]["n_failed_cases"] == 0
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    dice = metrics.query("metric == 'dice'")
    assert len(dice) == 4 and dice["value"].between(0, 1).all() and (dice["status"] != "failed").all()
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000
