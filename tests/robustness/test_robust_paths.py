"""Fuzz corpus, paths: case ids and file patterns never resolve outside the site root (issue 11).

One test per kind of hostile path, for every adapter that reads it. Each asserts a clear per-case error (or a
site-config error naming the field when the pattern itself escapes), that the other cases go on, and that
nothing is lost; ``test_hostile_paths_in_a_full_run_are_counted`` runs the CLI end to end and checks the report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.sites import SiteConfigError, SiteDataError, build_manifest, check_site, load_site_config

SECRET = "secret.nii.gz"


def write_pair(image: Path, label: Path) -> None:
    """A 6^3 image and a label with one vertebral-body voxel and one disc voxel (spine_audit values 1, 2)."""
    for path in (image, label):
        path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6), np.int16), np.eye(4)), str(image))
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[1, 1, 1], lab[3, 3, 3] = 1, 2
    nib.save(nib.Nifti1Image(lab, np.eye(4)), str(label))


def outside_file(tmp_path: Path) -> Path:
    """A NIfTI file outside every site root: what a hostile config tries to reach."""
    target = tmp_path / "outside" / SECRET
    write_pair(target, tmp_path / "outside" / "label.nii.gz")
    return target


def nifti_site(tmp_path: Path, ids: list[str], *, good: tuple[str, ...] = ("a", "b")) -> Path:
    """A nifti_table site whose metadata lists ``good`` (files present) and then ``ids`` (hostile ids)."""
    root = tmp_path / "site"
    for case in good:
        write_pair(root / "images" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz")
    pd.DataFrame({"case_id": [*good, *ids], "patient_id": [f"p{i}" for i in range(len(good) + len(ids))]}).to_csv(root / "metadata.csv", index=False)
    return root


def config(root: Path, fmt: str = "nifti_table", **options):
    return load_site_config({"name": "s", "format": fmt, "root": str(root), "label_map": "spine_audit", "options": options})


def assert_path_failures(failures, expected_ids: set[str]) -> None:
    found = {f.case_id: f for f in failures}
    assert set(found) == expected_ids
    for f in found.values():
        assert f.error_type == "PathOutsideRootError" and f.stage == "adapter", f
        assert "site root" in f.error


@pytest.mark.parametrize(
    "hostile_id",
    ["../outside/secret", "../../../../../../etc/passwd", "sub/../../outside/secret", "/etc/passwd"],
    ids=["dotdot", "deep-dotdot", "nested-dotdot", "absolute"],
)
def test_case_id_climbing_out_of_the_root_is_a_per_case_failure(tmp_path, hostile_id):
    outside_file(tmp_path)
    manifest, failures = build_manifest([config(nifti_site(tmp_path, [hostile_id]))])
    assert manifest["case_id"].tolist() == ["s/a", "s/b"]  # the other cases go on
    assert_path_failures(failures, {f"s/{hostile_id}"})
    assert failures[0].error.startswith(f"case id {hostile_id!r} cannot name a file inside the site root")


def test_label_symlink_leaving_the_root_is_refused_unless_allowed(tmp_path):
    secret = outside_file(tmp_path)
    root = nifti_site(tmp_path, [])
    (root / "labels" / "b.nii.gz").unlink()
    (root / "labels" / "b.nii.gz").symlink_to(secret)
    manifest, failures = build_manifest([config(root)])
    assert manifest["case_id"].tolist() == ["s/a"]
    assert_path_failures(failures, {"s/b"})
    assert "symbolic link" in failures[0].error and "symlinks: allow" in failures[0].error
    allowed, none = build_manifest([config(root, symlinks="allow")])
    assert allowed["case_id"].tolist() == ["s/a", "s/b"] and none == []


def test_symlink_inside_the_root_is_fine(tmp_path):
    """git-annex / DataLad trees are links into .git/annex inside the root: never refused."""
    root = nifti_site(tmp_path, [])
    store = root / ".store" / "b-label.nii.gz"
    store.parent.mkdir()
    (root / "labels" / "b.nii.gz").rename(store)
    (root / "labels" / "b.nii.gz").symlink_to(os.path.relpath(store, root / "labels"))
    manifest, failures = build_manifest([config(root)])
    assert manifest["case_id"].tolist() == ["s/a", "s/b"] and failures == []


def test_images_folder_symlinked_out_of_the_root_fails_each_case(tmp_path):
    outside = tmp_path / "elsewhere" / "images"
    root = nifti_site(tmp_path, [])
    outside.parent.mkdir()
    (root / "images").rename(outside)
    (root / "images").symlink_to(outside, target_is_directory=True)
    manifest, failures = build_manifest([config(root)])
    assert manifest.empty
    assert_path_failures(failures, {"s/a", "s/b"})


@pytest.mark.parametrize(
    ("option", "value"),
    [("images", "../other/{case_id}.nii.gz"), ("labels", "/abs/{case_id}.nii.gz"), ("metadata", "../../meta.csv"), ("labels", "~/x/{case_id}.nii.gz")],
    ids=["images-dotdot", "labels-absolute", "metadata-dotdot", "labels-home"],
)
def test_pattern_escaping_the_root_is_a_site_config_error_naming_the_field(tmp_path, option, value):
    with pytest.raises(SiteConfigError) as err:
        config(nifti_site(tmp_path, []), **{option: value})
    assert str(err.value).startswith(f"sites[s].options.{option}: must be a relative path inside the site root")
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "option", "value"),
    [("bids", "labels", "../derivatives/{stem}.nii.gz"), ("bids", "participants", "/etc/participants.tsv"), ("nnunet", "metadata", "../m.csv"),
     ("dicom", "images", "../dicom"), ("dicom", "files", "../*"), ("cspineseg", "images", "../{case}.nii.gz")],
    ids=["bids-labels", "bids-participants", "nnunet-metadata", "dicom-images", "dicom-files", "cspineseg-images"],
)  # fmt: skip
def test_every_adapter_refuses_escaping_patterns_at_load(tmp_path, fmt, option, value):
    with pytest.raises(SiteConfigError, match=rf"^sites\[s\]\.options\.{option}: must be a relative path inside the site root"):
        load_site_config({"name": "s", "format": fmt, "root": str(tmp_path), "label_map": "cspineseg", "options": {option: value}})


def test_symlinks_option_is_validated(tmp_path):
    with pytest.raises(SiteConfigError, match=r"^sites\[s\]\.options\.symlinks: allowed values are \['refuse', 'allow'\]; found 'yes'"):
        config(tmp_path, symlinks="yes")


def test_bids_derivative_label_linked_out_of_the_root(tmp_path):
    secret = outside_file(tmp_path)
    root = tmp_path / "bids"
    for sub in ("sub-01", "sub-02"):
        write_pair(root / sub / "anat" / f"{sub}_T2w.nii.gz", root / "derivatives/labels" / sub / "anat" / f"{sub}_T2w_seg-manual.nii.gz")
    link = root / "derivatives/labels/sub-02/anat/sub-02_T2w_seg-manual.nii.gz"
    link.unlink()
    link.symlink_to(secret)
    manifest, failures = build_manifest([config(root, "bids")])
    assert manifest["case_id"].tolist() == ["s/sub-01"]
    assert_path_failures(failures, {"s/sub-02"})


def test_nnunet_label_linked_out_of_the_root(tmp_path):
    secret = outside_file(tmp_path)
    root = tmp_path / "Dataset1_X"
    for case in ("c1", "c2"):
        write_pair(root / "imagesTr" / f"{case}_0000.nii.gz", root / "labelsTr" / f"{case}.nii.gz")
    (root / "labelsTr" / "c2.nii.gz").unlink()
    (root / "labelsTr" / "c2.nii.gz").symlink_to(secret)
    manifest, failures = build_manifest([config(root, "nnunet")])
    assert manifest["case_id"].tolist() == ["s/c1"]
    assert_path_failures(failures, {"s/c2"})


def cspineseg_site(tmp_path: Path) -> Path:
    root = tmp_path / "cspine"
    root.mkdir()
    (root / "case_R1.tsv").write_text("submitter_id\tage_at_index\tsex\nP1\t50\tFemale\nP2\t60\tMale\n")
    (root / "mr_series_R1.tsv").write_text("case_ids\timaging_studies.submitter_id\tseries_uid\nP1\tS1\t1.2\nP2\tS2\t1.3\n")
    for case, study, series in (("P1", "S1", "1.2"), ("P2", "S2", "1.3")):
        write_pair(root / "nifti" / f"{case}-{study}-{series}.nii.gz", root / "segmentation" / f"{case}-{study}-{series}_SEG.nii.gz")
    return root


def test_cspineseg_release_with_a_path_is_a_site_error(tmp_path):
    root = cspineseg_site(tmp_path)
    report = check_site(config(root, "cspineseg", release="../R1"))
    assert not report.ok and "options.release must be a plain release name" in report.site_error
    with pytest.raises(SiteDataError, match="options.release must be a plain release name"):
        build_manifest([config(root, "cspineseg", release="../R1")])


def test_cspineseg_image_linked_out_of_the_root(tmp_path):
    secret = outside_file(tmp_path)
    root = cspineseg_site(tmp_path)
    (root / "nifti" / "P2-S2-1.3.nii.gz").unlink()
    (root / "nifti" / "P2-S2-1.3.nii.gz").symlink_to(secret)
    manifest, failures = build_manifest([config(root, "cspineseg")])
    assert manifest["case_id"].tolist() == ["s/P1-S1-1.2"]
    assert_path_failures(failures, {"s/P2-S2-1.3"})


def test_dicom_case_folder_or_file_linked_out_of_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_AUDIT_CACHE", str(tmp_path / "cache"))
    outside = tmp_path / "outside-dicom"
    outside.mkdir()
    (outside / "slice.dcm").write_bytes(b"not read: refused before parsing")
    root = tmp_path / "dicom"
    root.mkdir()
    (root / "case-link").symlink_to(outside, target_is_directory=True)
    (root / "case-file").mkdir()
    (root / "case-file" / "slice.dcm").symlink_to(outside / "slice.dcm")
    manifest, failures = build_manifest([config(root, "dicom")])
    assert manifest.empty
    assert_path_failures(failures, {"s/case-link", "s/case-file"})


def test_hostile_paths_in_a_full_run_are_counted(tmp_path):
    """The run completes; the traversal id and the linked label are failed cases in failures.csv, results.json and
    the report; every metadata row is in the manifest (nothing lost)."""
    secret = outside_file(tmp_path)
    root = nifti_site(tmp_path, ["../outside/secret"], good=("a", "b", "c"))
    (root / "labels" / "c.nii.gz").unlink()
    (root / "labels" / "c.nii.gz").symlink_to(secret)
    model = tmp_path / "pred" / "s"
    for case in ("a", "b"):
        write_pair(tmp_path / "scratch" / f"{case}.nii.gz", model / f"{case}.nii.gz")
    protocol = {
        "name": "hostile paths", "version": "1",
        "sites": [{"name": "s", "format": "nifti_table", "root": str(root), "label_map": "spine_audit"}],
        "model": {"name": "copy", "kind": "predictions", "path": str(tmp_path / "pred"), "options": {"pattern": "{site}/{local_id}.nii.gz"},
                  "labels": {1: "vertebral_body", 2: "intervertebral_disc"}},
        "structures": ["vertebral_body", "intervertebral_disc"], "metrics": {"names": ["dice"]}, "subgroups": {"columns": ["site"]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
    }  # fmt: skip
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "protocol.yaml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    hostile = {"s/../outside/secret", "s/c"}
    failures = pd.read_csv(out / "failures.csv")
    assert set(failures["case_id"]) == hostile and set(failures["error_type"]) == {"PathOutsideRootError"}
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["n_cases"] == 4 and results["data"]["n_failed_cases"] == 2
    assert set(pd.read_csv(out / "manifest.csv")["case_id"]) == {"s/a", "s/b", *hostile}
    html = (out / "report.html").read_text()
    assert "Failed cases (2)" in html and html.count("PathOutsideRootError") == 2
    assert SECRET not in html or "site root" in html  # the report names the refusal, it never shows the file's content
