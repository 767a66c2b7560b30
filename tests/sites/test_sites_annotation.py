"""Sites declare which structures their reference standard annotates (issue 11).

A real multi-site audit: a TPTBox site (real cervical MRI and lumbar CT) that annotates vertebral bodies and discs
next to a Spinal Cord Toolbox site (real T2w and T1w) that annotates only the spinal cord. The audited "model"
outputs the reference itself plus, at the SCT site, vertebral bodies (a real model sees them in a cervical scan):
those must be ``not_assessed``, never false positives, and never enter the body's statistics.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.label_maps import get_label_map
from audit.ontology import COARSE_VALUES, remap_labels
from audit.sites import SiteConfigError, check_site, load_site_config

STRUCTURES = ("vertebral_body", "intervertebral_disc", "spinal_cord")
MODEL_LABELS = {1: "vertebral_body", 2: "intervertebral_disc", 3: "spinal_canal", 4: "spinal_cord", 5: "vertebra"}


def site_cases(shared: Path) -> dict[str, list[dict]]:
    tpt_c, tpt_l, sct = shared / "tptbox-cervical-mri", shared / "tptbox-lumbar-ct", shared / "sct-cervical"
    return {
        "tptbox": [
            {"id": "c5c7", "image": tpt_c / "sub-mri_label-6_T2w.nii.gz", "label": tpt_c / "sub-mri_seg-subreg_label-6_msk.nii.gz"},
            {"id": "l2l4", "image": tpt_l / "sub-ct_label-22_ct.nii.gz", "label": tpt_l / "sub-ct_seg-subreg_label-22_msk.nii.gz"},
        ],
        "sct": [
            {"id": "t2", "image": sct / "t2" / "t2.nii.gz", "label": sct / "t2" / "t2_seg-manual.nii.gz"},
            {"id": "t1", "image": sct / "t1" / "t1w.nii.gz", "label": sct / "t1" / "t1w_seg-manual.nii.gz"},
        ],
    }


MAPS = {"tptbox": "tptbox_subregion", "sct": "sct_cord"}


def prediction_with_bodies_at_sct(label: Path, site: str) -> nib.Nifti1Image:
    """The reference on the ontology; at the SCT site a block of 'vertebral body' voxels is added beside the cord."""
    img = nib.load(str(label))
    canonical = remap_labels(np.asanyarray(img.dataobj), get_label_map(MAPS[site])).array.copy()
    if site == "sct":
        block = canonical[:6, :6, :6]
        block[block == 0] = COARSE_VALUES["vertebral_body"]
    return nib.Nifti1Image(canonical.astype(np.uint8), img.affine)


@pytest.fixture(scope="module")
def annotated_run(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("annot")
    sites = []
    for site, cases in site_cases(shared_data).items():
        site_dir = root / site
        (site_dir / "images").mkdir(parents=True)
        (site_dir / "labels").mkdir()
        rows = []
        for i, case in enumerate(cases):
            shutil.copy(case["image"], site_dir / "images" / f"{case['id']}.nii.gz")
            shutil.copy(case["label"], site_dir / "labels" / f"{case['id']}.nii.gz")
            (root / "pred" / site).mkdir(parents=True, exist_ok=True)
            nib.save(prediction_with_bodies_at_sct(case["label"], site), str(root / "pred" / site / f"{case['id']}.nii.gz"))
            rows.append({"case_id": case["id"], "patient_id": f"{site}-{i}", "manufacturer": "SIEMENS", "field_strength": 3, "age": 40 + i, "sex": "FM"[i]})
        if site == "sct":  # a corrupt label: failed for the cord, not_assessed for the structures SCT never annotates
            shutil.copy(cases[0]["image"], site_dir / "images" / "bad.nii.gz")
            (site_dir / "labels" / "bad.nii.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00truncated")
            rows.append({"case_id": "bad", "patient_id": "sct-9", "manufacturer": "SIEMENS", "field_strength": 3, "age": 50, "sex": "F"})
        pd.DataFrame(rows).to_csv(site_dir / "metadata.csv", index=False)
        entry = {"name": site, "format": "nifti_table", "root": str(site_dir), "label_map": MAPS[site]}
        if site == "tptbox":
            entry["annotates"] = ["vertebral_body", "intervertebral_disc"]  # its cord labels are not the reference standard
        sites.append(entry)
    protocol = {
        "name": "annotation matrix",
        "version": "1",
        "sites": sites,
        "model": {"name": "reference-plus-bodies", "kind": "predictions", "path": str(root / "pred"), "options": {"pattern": "{site}/{local_id}.nii.gz"}, "labels": MODEL_LABELS},
        "structures": list(STRUCTURES),
        "metrics": {"names": ["dice", "hd95"]},
        "subgroups": {"columns": ["site"]},
        "statistics": {"bootstrap_iterations": 200, "min_group_size": 2, "adjusted_model": {"enabled": False}},
    }
    (root / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    out = root / "run"
    result = CliRunner().invoke(app, ["run", str(root / "protocol.yaml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_unannotated_structures_are_not_assessed_never_false_positive(annotated_run):
    metrics = pd.read_csv(annotated_run / "metrics.csv")
    status = metrics[metrics["metric"] == "dice"].set_index(["case_id", "structure"])["status"]
    for case in ("sct/t2", "sct/t1"):
        assert status[(case, "vertebral_body")] == "not_assessed"  # the model drew bodies there: not a false positive
        assert status[(case, "intervertebral_disc")] == "not_assessed"
        assert status[(case, "spinal_cord")] == "ok"
    for case in ("tptbox/c5c7", "tptbox/l2l4"):
        assert status[(case, "spinal_cord")] == "not_assessed"
    assert status[("tptbox/c5c7", "vertebral_body")] == "ok" and status[("tptbox/l2l4", "intervertebral_disc")] == "both_empty"
    assert status[("sct/bad", "spinal_cord")] == "failed"
    assert status[("sct/bad", "vertebral_body")] == "not_assessed"
    assert metrics.loc[metrics["status"] == "not_assessed", "value"].isna().all()
    scored = metrics[(metrics["metric"] == "dice") & (metrics["status"] == "ok")]
    np.testing.assert_allclose(scored["value"], 1.0, atol=1e-12)  # a perfect prediction where the site annotates


def test_not_assessed_rows_never_enter_statistics(annotated_run):
    results = json.loads((annotated_run / "results.json").read_text())
    tables = [pd.DataFrame(results["statistics"][k]) for k in ("overall", "group_estimates")]
    est = pd.concat(tables, ignore_index=True).query("metric == 'dice'").set_index(["axis", "group", "structure"])
    # bodies: only the two TPTBox cases count; the SCT cases (bodies predicted, none annotated) are not in n_cases
    assert est.loc[("overall", "all", "vertebral_body"), "n_cases"] == 2
    assert est.loc[("overall", "all", "vertebral_body"), "mean"] == pytest.approx(1.0, abs=1e-12)
    assert est.loc[("overall", "all", "vertebral_body"), "n_failed"] == 0  # sct/bad failed, but never had bodies to score
    assert est.loc[("overall", "all", "spinal_cord"), "n_cases"] == 2 and est.loc[("overall", "all", "spinal_cord"), "n_failed"] == 1
    assert est.loc[("site", "sct", "vertebral_body"), "n_cases"] == 0


def test_results_and_report_show_the_site_by_structure_matrix(annotated_run):
    results = json.loads((annotated_run / "results.json").read_text())
    matrix = pd.DataFrame(results["metrics"]["annotation"]).set_index(["site", "structure"])
    expected = {("sct", "vertebral_body"): False, ("sct", "intervertebral_disc"): False, ("sct", "spinal_cord"): True,
                ("tptbox", "vertebral_body"): True, ("tptbox", "intervertebral_disc"): True, ("tptbox", "spinal_cord"): False}  # fmt: skip
    assert matrix["annotated"].to_dict() == expected
    assert matrix.loc[("sct", "spinal_cord"), ["n_cases", "n_assessed"]].tolist() == [3, 3]  # the failed case is assessed (failed)
    assert results["data"]["n_not_assessed"] == 3 * 2 + 2 * 1  # 3 SCT cases x 2 structures + 2 TPTBox cases x the cord
    detection = pd.DataFrame(results["metrics"]["detection"]).set_index(["structure", "status"])["n"]
    assert detection[("vertebral_body", "not_assessed")] == 3 and ("vertebral_body", "false_positive") not in detection.index
    html = (annotated_run / "report.html").read_text()
    assert "Reference annotation (site x structure)" in html and html.count("not assessed</span>") == 3


def test_annotates_defaults_to_the_label_map_structures(tmp_path):
    config = load_site_config({"name": "t", "format": "nifti_table", "root": str(tmp_path), "label_map": "tptbox_subregion"})
    assert config.annotated_structures == ("vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord")
    levels = load_site_config({"name": "v", "format": "nifti_table", "root": str(tmp_path), "label_map": "tptbox_vert"})
    assert levels.annotated("vertebra") and levels.annotated("C5-C6") and not levels.annotated("vertebral_body")
    whole = load_site_config({"name": "w", "format": "nifti_table", "root": str(tmp_path), "label_map": "totalseg_mr"})
    assert whole.annotated("vertebra") and not whole.annotated("C5")  # a whole-spine mask says nothing about levels
    declared = load_site_config({"name": "d", "format": "nifti_table", "root": str(tmp_path), "label_map": "tptbox_subregion", "annotates": ["spinal_cord"]})
    assert re.search(r"^annotates +spinal_cord$", check_site(declared, load_voxels=False).render(), re.M)


@pytest.mark.parametrize(
    ("annotates", "message"),
    [
        (["vertebral_bodies"], "sites[t].annotates[0]: structure: unknown name 'vertebral_bodies'"),
        (["spinal_cord"], "sites[t].annotates[0]: label map 'cspineseg' has no value for 'spinal_cord'"),
        ("spinal_cord", "sites[t].annotates: expected a non-empty list of structure names; found 'spinal_cord'"),
        ([], "sites[t].annotates: expected a non-empty list"),
        (["vertebral_body", "vertebral_body"], "sites[t].annotates: structure names must be unique"),
    ],
    ids=["unknown-name", "not-in-label-map", "not-a-list", "empty", "duplicate"],
)
def test_annotates_is_validated_with_the_field_named(tmp_path, annotates, message):
    with pytest.raises(SiteConfigError) as err:
        load_site_config({"name": "t", "format": "nifti_table", "root": str(tmp_path), "label_map": "cspineseg", "annotates": annotates})
    assert str(err.value).startswith(message)
