"""On-disk layout, reproducibility, headers and metadata of a written synthetic cohort."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from audit.synthetic import DEFAULT_SITES, PlantedEffects, cohort_case_files, generate_cohort, load_truth
from audit.synthetic.demographics import Patient, metadata_row


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = file_hashes(generate_cohort(tmp_path / "a", n_cases=6, seed=3).out_dir)
    b = file_hashes(generate_cohort(tmp_path / "b", n_cases=6, seed=3, workers=2).out_dir)
    c = file_hashes(generate_cohort(tmp_path / "c", n_cases=6, seed=4).out_dir)
    assert a == b
    images = [k for k in a if "/images/" in k]
    assert len(images) == 6
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in images)
    assert a["cohort.json"] != c["cohort.json"]


def test_regenerating_into_a_previous_cohort_replaces_it(tmp_path: Path) -> None:
    generate_cohort(tmp_path, n_cases=8, seed=1)
    generate_cohort(tmp_path, n_cases=4, seed=1)
    assert len(list(tmp_path.rglob("images/*.nii.gz"))) == 4


def test_refuses_a_non_empty_folder_that_is_not_a_cohort(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="cohort.json"):
        generate_cohort(tmp_path, n_cases=2)


def test_layout_configs_and_metadata_columns(small_cohort: Path) -> None:
    cohort = json.loads((small_cohort / "cohort.json").read_text())
    assert cohort["n_cases"] == 24 and len(cohort["cases"]) == 24
    assert cohort["planted"]["hard_site"] == "site-D"
    for profile in DEFAULT_SITES:
        config_path = small_cohort / "sites" / f"{profile.name}.yaml"
        config = yaml.safe_load(config_path.read_text())
        assert config["name"] == profile.name and config["format"] == "nifti_table" and config["label_map"] == "spine_audit"
        root = (config_path.parent / config["root"]).resolve()
        assert root == (small_cohort / profile.name).resolve()
        table = pd.read_csv(root / config["options"]["metadata"], dtype=str, keep_default_na=False)
        columns = config["options"]["columns"]
        assert list(table.columns) == list(columns.values())  # nothing but what a site would hold
        for local_id in table[columns["case_id"]]:
            assert (root / config["options"]["images"].format(case_id=local_id)).is_file()
            assert (root / config["options"]["labels"].format(case_id=local_id)).is_file()
        assert set(table[columns["vendor"]]) == {profile.vendor_raw}
        assert set(table[columns["patient_id"]]) <= {c["patient_id"] for c in cohort["cases"]}
        assert all(re.fullmatch(r"P\d{4}", p) for p in table[columns["patient_id"]])


@pytest.mark.parametrize("profile", DEFAULT_SITES, ids=[s.name for s in DEFAULT_SITES])
def test_nifti_headers_match_the_site_profile(small_cohort: Path, profile) -> None:
    images = sorted((small_cohort / profile.name / "images").glob("*.nii.gz"))
    assert images, f"no cases at {profile.name}"
    for path in images[:2]:
        img = nib.load(path)
        lab = nib.load(small_cohort / profile.name / "labels" / path.name)
        assert "".join(nib.aff2axcodes(img.affine)) == profile.axcodes
        np.testing.assert_allclose(lab.affine, img.affine, atol=1e-6)
        assert img.get_data_dtype() == np.dtype(profile.dtype) and lab.get_data_dtype() == np.uint8
        canon = nib.as_closest_canonical(img)
        zooms = canon.header.get_zooms()
        np.testing.assert_allclose(zooms, (profile.slice_thickness_mm, profile.inplane_spacing_mm, profile.inplane_spacing_mm), atol=1e-5)
        assert canon.shape == profile.shape_ras
        assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2, 3, 4}


def test_repeated_exams_share_patient_site_and_anatomy(small_cohort: Path) -> None:
    truth = load_truth(small_cohort)
    repeats = truth[truth["exam"] == 2]
    assert len(repeats) == round(24 * 0.1 / 1.1)
    for _, second in repeats.iterrows():
        first = truth[(truth["patient_id"] == second["patient_id"]) & (truth["exam"] == 1)].iloc[0]
        assert first["site"] == second["site"]
        assert 0.5 <= second["age_years"] - first["age_years"] <= 2.0
        assert abs(first["mean_disc_height_mm"] - second["mean_disc_height_mm"]) < 0.3  # same spine, small changes
        assert first["sex"] == second["sex"] and first["race"] == second["race"]


def test_truth_records_planted_hard_site(small_cohort: Path) -> None:
    truth = load_truth(small_cohort)
    assert truth.loc[truth["site"] == "site-D", "hard_site"].all()
    assert not truth.loc[truth["site"] != "site-D", "hard_site"].any()
    assert truth.loc[truth["site"] == "site-D", "noise_sigma"].min() > 2 * truth.loc[truth["site"] == "site-C", "noise_sigma"].max()


def old_patient(age: float = 92.4) -> Patient:
    return Patient(patient_id="P0042", age_years=age, sex="F", race="Not Reported", ethnicity="Hispanic or Latino", anatomy_seed=1)


@pytest.mark.parametrize(
    ("site", "age", "sex", "race"),
    [("site-A", "092Y", "F", ""), ("site-B", ">89", "Female", "Not Reported"), ("site-C", 92.4, "female", ""),
     ("site-D", "90+", "F", "Unknown")],
    ids=["dicom-age", "redacted", "float-age", "philips"],
)
def test_metadata_dialects(site: str, age, sex: str, race: str) -> None:
    profile = next(s for s in DEFAULT_SITES if s.name == site)
    row = metadata_row(old_patient(), profile, "sub-0042_ses-1", {})
    cols = profile.dialect.column_map
    assert row[cols["age"]] == age and row[cols["sex"]] == sex and row[cols["race"]] == race
    assert row[cols["field_strength"]] == profile.field_strength_raw
    missing = metadata_row(old_patient(), profile, "x", {"sex": True})
    assert missing[cols["sex"]] == profile.dialect.missing


def test_cohort_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hard_site"):
        generate_cohort(tmp_path / "x", n_cases=2, planted=PlantedEffects(hard_site="site-Z"))
    with pytest.raises(ValueError, match="n_cases"):
        generate_cohort(tmp_path / "y", n_cases=0)
    with pytest.raises(ValueError, match="repeat_fraction"):
        generate_cohort(tmp_path / "z", n_cases=2, repeat_fraction=1.5)


def test_site_adapters_read_the_cohort_and_recover_the_truth(small_cohort: Path) -> None:
    """End to end with the nifti_table adapter (audit.sites): every case found, metadata harmonized to the truth."""
    from audit.sites import build_manifest, load_site_config

    configs = [load_site_config(p) for p in sorted((small_cohort / "sites").glob("*.yaml"))]
    manifest, failures = build_manifest(configs)
    assert failures == []
    truth = load_truth(small_cohort).set_index("case_id")
    assert sorted(manifest["case_id"]) == sorted(truth.index)
    expected_vendor = {"site-A": "Siemens", "site-B": "GE", "site-C": "Siemens", "site-D": "Philips"}
    expected_field = {"site-A": "3T", "site-B": "3T", "site-C": "1.5T", "site-D": "1.5T"}
    for _, row in manifest.iterrows():
        true = truth.loc[row["case_id"]]
        assert row["vendor"] == expected_vendor[row["site"]] and row["field_strength"] == expected_field[row["site"]]
        assert row["patient_id"] == true["patient_id"]
        if "age" not in true["missing_metadata"] and true["age_years"] <= 89:
            assert abs(row["age_years"] - true["age_years"]) < 1.0
        if "sex" not in true["missing_metadata"]:
            assert row["sex"] == true["sex"]


def test_cohort_case_files_list_every_case_with_its_files(small_cohort: Path) -> None:
    files = cohort_case_files(small_cohort)
    truth = load_truth(small_cohort)
    assert [f[0] for f in files] == sorted(truth["case_id"])
    for case_id, image, label, site in files:
        assert image.is_file() and label.is_file() and image.name == label.name
        assert case_id == f"{site}/{image.name[: -len('.nii.gz')]}" and image.parent.parent.name == site
