"""nifti_table adapter, manifest building and check_site on a tiny generated site."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from audit.records import validate_manifest
from audit.sites import SiteConfigError, SiteDataError, build_manifest, check_site, iter_site, load_site_config

AFFINE = np.diag([0.5, 0.5, 4.0, 1.0])
HEADER = "case_id,patient_id,manufacturer,model,field_strength,age,sex,race,ethnicity\n"


def write_case(root: Path, case_id: str, *, label_values=(1, 2), label_affine=AFFINE, label_shape=(8, 8, 4)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), AFFINE), root / "images" / f"{case_id}.nii.gz")
    labels = np.zeros(label_shape, np.uint8)
    for i, v in enumerate(label_values):
        labels[i, 0, 0] = v
    nib.save(nib.Nifti1Image(labels, label_affine), root / "labels" / f"{case_id}.nii.gz")


def small_site(root: Path) -> Path:
    """Five good-metadata cases with site-flavoured raw strings, plus one of each bad input."""
    for cid in ("c0", "c1", "c2", "c3", "dup", "badage", "unknownlab", "shifted", "orphan", "corrupt"):
        write_case(root, cid, label_values=(1, 7) if cid == "unknownlab" else (1, 2),
                   label_affine=AFFINE + _shift(cid))
    (root / "labels" / "c3.nii.gz").unlink()  # missing label
    corrupt = root / "images" / "corrupt.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    rows = [
        "c0,p0,SIEMENS,Skyra,1.494,045Y,Female,White,Not Hispanic or Latino",
        "c1,p0,GE MEDICAL SYSTEMS,Signa,3,061Y,M,Black or African American,Hispanic or Latino",
        "c2,p2,Philips Healthcare,Ingenia,15000,>89,O,Not Reported,Not Reported",
        "c3,p3,SIEMENS,Skyra,3,30,F,White,",
        "dup,p4,SIEMENS,Skyra,3,30,F,White,",
        "dup,p5,SIEMENS,Skyra,3,31,F,White,",
        "badage,p6,SIEMENS,Skyra,3,forty,F,White,",
        "unknownlab,p7,Acme Scanners,X1,3,50,Male,Martian,",
        "shifted,p8,SIEMENS,Skyra,3,50,M,White,",
        "corrupt,p9,SIEMENS,Skyra,3,50,M,White,",
        "nofiles,p10,SIEMENS,Skyra,3,50,M,White,",
    ]
    (root / "metadata.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return root


def _shift(cid: str) -> np.ndarray:
    shift = np.zeros((4, 4))
    if cid == "shifted":
        shift[2, 3] = 2.0  # label origin 2 mm off along z
    return shift


@pytest.fixture
def site(tmp_path):
    small_site(tmp_path / "data")
    return load_site_config({"name": "site-A", "format": "nifti_table", "root": "data"}, base_dir=tmp_path)


def test_manifest_rows_are_harmonized_and_valid(site):
    manifest, failures = build_manifest([site])
    validate_manifest(manifest)
    usable = manifest[~manifest["case_id"].isin({f.case_id for f in failures})]
    assert usable["case_id"].tolist() == ["site-A/c0", "site-A/c1", "site-A/c2", "site-A/unknownlab", "site-A/shifted", "site-A/corrupt"]
    # cases whose files are missing keep their rows and metadata (Table 1, completeness, their own groups)
    assert {"site-A/c3", "site-A/nofiles"} <= set(manifest["case_id"])
    missing_label = manifest.set_index("case_id").loc["site-A/c3"]
    assert (missing_label["vendor"], missing_label["sex"], missing_label["race"], missing_label["age_years"]) == ("Siemens", "F", "White", 30.0)
    row = manifest.set_index("case_id").loc["site-A/c2"]
    assert (row["vendor"], row["field_strength"], row["sex"], row["race"], row["ethnicity"]) == ("Philips", "1.5T", "Other", "Unknown", "Unknown")
    assert row["age_years"] == 90.0 and bool(row["age_redacted"]) and row["age_years_raw"] == ">89"
    assert row["vendor_raw"] == "Philips Healthcare" and row["label_map"] == "spine_audit" and row["site"] == "site-A"
    odd = manifest.set_index("case_id").loc["site-A/unknownlab"]
    assert odd["vendor"] == "Other" and odd["race"] == "Unknown"
    assert "vendor: unmapped value 'Acme Scanners'" in odd["metadata_warnings"] and "race: unmapped value 'Martian'" in odd["metadata_warnings"]
    assert manifest.loc[manifest.case_id == "site-A/c1", "patient_id"].item() == "p0"


def test_cheap_failures_are_per_case(site):
    _, failures = build_manifest([site])
    kinds = {(f.case_id, f.error_type) for f in failures}
    assert kinds == {
        ("site-A/c3", "MissingLabel"),
        ("site-A/dup", "DuplicateCaseId"),
        ("site-A/badage", "MetadataError"),
        ("site-A/nofiles", "MissingImage"),
        ("site-A/orphan", "MissingMetadata"),
    }
    assert sum(f.case_id == "site-A/dup" for f in failures) == 2  # every occurrence fails
    assert all(f.stage == "adapter" and f.site == "site-A" for f in failures)


def test_iter_site_is_lazy(site):
    stream = iter_site(site)
    first = next(stream)
    assert first.case_id == "site-A/c0"


def test_check_site_reports_errors_counts_and_labels(site):
    report = check_site(site)
    assert not report.ok and report.n_cases == 6 and report.n_checked == 6
    by_case = {(f.case_id, f.error_type) for f in report.errors if f.stage == "harmonize"}
    assert by_case == {
        ("site-A/unknownlab", "UnknownLabelValuesError"),
        ("site-A/shifted", "GeometryMismatchError"),
        ("site-A/corrupt", "CorruptImageError"),
    }
    assert report.label_values[7][2] == "UNKNOWN" and report.label_values[7][0] == 1
    assert report.label_values[2][:2] == (5, 5)  # the corrupt case has a readable label and report.label_values[2][2] == "intervertebral_disc"
    assert report.counts["vendor"] == {"Siemens": 3, "GE": 1, "Philips": 1, "Other": 1}
    assert report.counts["field_strength"] == {"1.5T": 2, "3T": 4}
    assert report.counts["age_band"] == {"40-59": 4, "60-74": 1, "75+": 1}  # ages 45, 61, 90 (redacted), 50 x 3; the report's bands
    assert report.completeness["ethnicity"] == pytest.approx(2 / 6)
    text = report.render()
    for needle in ("cases found", "GeometryMismatchError", "Label values seen", "Cases by vendor", "Unmapped metadata values"):
        assert needle in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    assert "UnknownLabelValuesError" in console.export_text()


def test_check_site_ok_for_a_clean_site(tmp_path):
    root = tmp_path / "clean"
    write_case(root, "a")
    (root / "metadata.csv").write_text(HEADER + "a,p,SIEMENS,Skyra,3,40,F,White,\n")
    report = check_site(load_site_config({"name": "clean", "format": "nifti_table", "root": str(root)}))
    assert report.ok and report.errors == []


def test_site_level_error_is_reported_not_raised(tmp_path):
    (tmp_path / "empty").mkdir()
    config = load_site_config({"name": "empty", "format": "nifti_table", "root": str(tmp_path / "empty")})
    report = check_site(config)
    assert not report.ok and "metadata.csv not found" in report.site_error
    with pytest.raises(SiteDataError, match="not found"):
        build_manifest([config])


def test_root_env_vars_and_relative_paths(tmp_path, monkeypatch):
    small_site(tmp_path / "data")
    monkeypatch.setenv("SPINE_TEST_ROOT", str(tmp_path))
    yaml_path = tmp_path / "cfg" / "site.yaml"
    yaml_path.parent.mkdir()
    yaml_path.write_text("name: s\nformat: nifti_table\nroot: ${SPINE_TEST_ROOT}/data\nlabel_map: cspineseg\ndefaults: {vendor: GE}\n")
    config = load_site_config(yaml_path)
    assert config.root == (tmp_path / "data").resolve() and config.label_map.name == "cspineseg"
    cohort = load_site_config({"name": "s", "format": "nifti_table", "root": "{cohort}/data"}, cohort_dir=tmp_path)
    assert cohort.root == (tmp_path / "data").resolve()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": "s", "format": "zip", "root": "."}, r"format: unknown site format 'zip'; allowed: \['bids', 'cspineseg'"),
        ({"name": "s", "format": "nifti_table", "root": ".", "colour": 1}, r"allowed keys are .*found unexpected \['colour'\]"),
        ({"name": "a/b", "format": "nifti_table", "root": "."}, r"name: expected letters"),
        ({"name": "s", "format": "nifti_table", "root": "${SPINE_AUDIT_SURELY_UNSET}/x"}, r"SPINE_AUDIT_SURELY_UNSET"),
        ({"name": "s", "format": "nifti_table", "root": ".", "options": {"imgs": "x"}}, r"options: format 'nifti_table' allows .*\['imgs'\]"),
        ({"name": "s", "format": "nifti_table", "root": ".", "label_map": "nope"}, r"label_map: unknown convention 'nope'"),
        ({"name": "s", "format": "bids", "root": "."}, r"label_map: required for format 'bids'"),
        ({"name": "s", "format": "nifti_table", "root": ".", "defaults": {"colour": 1}}, r"defaults: allowed keys"),
    ],
    ids=["format", "top-key", "name", "env", "option", "label-map", "label-map-required", "defaults"],
)
def test_config_errors_name_the_field(data, match, tmp_path):
    with pytest.raises(SiteConfigError, match=match):
        load_site_config(data, base_dir=tmp_path)


def test_pseudonymized_patient_ids_use_hmac(tmp_path, monkeypatch):
    root = small_site(tmp_path / "data")
    monkeypatch.setenv("SPINE_AUDIT_PSEUDONYM_KEY", "secret")
    config = load_site_config({"name": "A", "format": "nifti_table", "root": str(root), "options": {"pseudonymize": True}})
    manifest, _ = build_manifest([config])
    expected = hmac.new(b"secret", b"A/p0", hashlib.sha256).hexdigest()[:20]  # independent stdlib computation
    case_c0 = "A/c-" + hmac.new(b"secret", b"case:A/c0", hashlib.sha256).hexdigest()[:20]  # case ids too
    assert manifest.loc[manifest.case_id == case_c0, "patient_id"].item() == expected
    assert "p0" not in set(manifest["patient_id"]) and "A/c0" not in set(manifest["case_id"])
    monkeypatch.delenv("SPINE_AUDIT_PSEUDONYM_KEY")
    _, failures = build_manifest([config])
    assert {f.error_type for f in failures} >= {"PrivacyError"}
    assert not any(f.case_id == "A/c0" or "c0" in f.error for f in failures if f.error_type == "PrivacyError")


def test_duplicate_site_names_rejected(site):
    with pytest.raises(ValueError, match="site names must be unique"):
        build_manifest([site, site])
