"""Everything a protocol names is validated early: at load (names, numbers, duplicate keys), before the run folder
exists (model path, site configs, roots, environment variables) and right after the sites stage (columns, groups)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_protocol import demo_dict, with_change

from audit.errors import ModelSpecError, PrivacyError, ProtocolError, SiteConfigError, UserError
from audit.protocol import (
    canonical_sha256,
    load_protocol,
    protocol_from_dict,
    protocol_to_dict,
    validate_against_manifest,
    validate_inputs,
)
from audit.yamlio import load_yaml

REPO = Path(__file__).resolve().parents[2]


# ---- at load ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("metrics.names", ["dice", "hd96"], r"metrics\.names\[1\]: metric: unknown name 'hd96'; allowed values are \["),
        ("metrics.names", ["dice", "dice"], r"metrics\.names: each entry may appear once; repeated \['dice'\]"),
        ("statistics.primary_metric", "iou", r"statistics\.primary_metric: must be one of the protocol's metrics \[.*'dice'.*\]; found 'iou'"),
        ("structures", ["vertebral_body", "vertebral_body"], r"structures: each entry may appear once; repeated \['vertebral_body'\]"),
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "sex"], r"subgroups\.columns: each entry may appear once; repeated \['sex'\]"),
        ("statistics.bootstrap_iterations", 10**9, r"statistics\.bootstrap_iterations: must be at most 100,000; found 1,000,000,000"),
        ("statistics.permutation_iterations", 10**8, r"statistics\.permutation_iterations: must be at most 1,000,000; found 100,000,000"),
        ("synthetic_cohort.n_cases", 10**7, r"synthetic_cohort\.n_cases: must be between 8 and 10,000; found 10,000,000"),
        ("acceptance.0.threshold", float("nan"), r"acceptance\[0\]\.threshold: expected a finite number; found nan"),
        ("statistics.failure_thresholds", {"dice": float("inf")}, r"statistics\.failure_thresholds\.dice: expected a finite number; found inf"),
        ("statistics.failure_thresholds", {"hd99": 3.0}, r"statistics\.failure_thresholds\.hd99: not one of the protocol's metrics"),
        ("statistics.equivalence_margins", {"dice": 0}, r"statistics\.equivalence_margins\.dice: must be positive; found 0"),
        ("statistics.adjusted_model.metric", "hd99", r"statistics\.adjusted_model\.metric: must be one of the protocol's metrics"),
        ("metrics.nsd_tolerances_mm", [0.0], r"metrics\.nsd_tolerances_mm\[0\]: must be a positive distance in mm; found 0\.0"),
        ("metrics.missed_distance", -5, r"metrics\.missed_distance: must be 'diagonal' or a positive distance in mm; found -5"),
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "patient_id"], r"subgroups\.columns\[7\]: 'patient_id' is an identifier or file-path column and may not group"),
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "image_path"], r"subgroups\.columns\[7\]: 'image_path' is an identifier or file-path column"),
        ("subgroups.intersections", [["sex", "PatientName"]], r"subgroups\.intersections\[0\]\[1\]: 'PatientName' is an identifier or file-path column"),
        ("statistics.adjusted_model.factors", ["sex", "study_uid"], r"statistics\.adjusted_model\.factors\[1\]: 'study_uid' is an identifier"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 and "\\" not in v else None,
)
def test_protocol_names_are_checked_at_load(path, value, message):
    with pytest.raises(ProtocolError, match=message):
        protocol_from_dict(with_change(path, value))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  alpha: 0.05\n", "  alpha: 0.05\n  alpha: 0.5\n", r"not valid YAML: duplicate key 'alpha' \(first at line \d+, again at line \d+\)"),
        ("version: \"1.0\"\n", "version: \"1.0\"\nname: another audit\n", r"not valid YAML: duplicate key 'name' \(first at line 4, again at line 6\)"),
        ("threshold: 0.80", "threshold: .nan", r"acceptance\[0\]\.threshold: expected a finite number; found nan"),
        ("bootstrap_iterations: 1000", "bootstrap_iterations: .inf", r"statistics\.bootstrap_iterations: expected an integer; found inf"),
    ],
    ids=["nested-duplicate", "top-duplicate", "yaml-nan", "yaml-inf"],
)
def test_yaml_duplicates_and_nan_are_refused_by_load_protocol(tmp_path, old, new, message):
    text = (REPO / "protocols" / "demo.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    path = tmp_path / "p.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(ProtocolError, match=message):
        load_protocol(path)


def test_yaml_merge_keys_may_override_without_counting_as_duplicates():
    assert load_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n") == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}}


def test_site_config_files_refuse_duplicate_keys(tmp_path):
    from audit.sites import load_site_config

    path = tmp_path / "site.yaml"
    path.write_text("name: a\nformat: nifti_table\nroot: .\nroot: /elsewhere\n", encoding="utf-8")
    with pytest.raises(SiteConfigError, match=r"site config .*site\.yaml: not valid YAML: duplicate key 'root'"):
        load_site_config(path)


def test_the_user_error_family():
    for cls in (ProtocolError, SiteConfigError, ModelSpecError, PrivacyError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    from audit.sites import SiteDataError

    assert issubclass(SiteDataError, UserError)


@pytest.mark.parametrize("path", sorted((REPO / "protocols").glob("*.yaml")), ids=lambda p: p.name)
def test_canonical_form_round_trips_through_yaml_to_the_same_sha256(path):
    """The run folder's protocol.yaml (yaml.safe_dump of the canonical form) hashes to the protocol's sha256."""
    protocol = load_protocol(path)
    reloaded = load_yaml(yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False))
    assert canonical_sha256(reloaded) == protocol.sha256
    reloaded["statistics"]["seed"] += 1
    assert canonical_sha256(reloaded) != protocol.sha256


# ---- before the run folder exists --------------------------------------------------------------


def inline_site_protocol(root: str, **site_options) -> dict:
    """The demo protocol with one inline nifti_table site at ``root`` and no synthetic cohort."""
    data = copy.deepcopy(demo_dict())
    del data["synthetic_cohort"]
    data["sites"] = [{"name": "hospital", "format": "nifti_table", "root": root, "options": dict(site_options)}]
    data["report"]["synthetic_columns"] = []
    return data


def test_validate_inputs_accepts_an_existing_site_and_the_builtin_model(tmp_path):
    validate_inputs(protocol_from_dict(inline_site_protocol(str(tmp_path)), base_dir=tmp_path))


def test_validate_inputs_names_an_unset_environment_variable_in_a_site_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINE_AUDIT_TEST_UNSET_ROOT", raising=False)
    protocol = protocol_from_dict(inline_site_protocol("${SPINE_AUDIT_TEST_UNSET_ROOT}/site-a"), base_dir=tmp_path)
    with pytest.raises(ProtocolError, match=r"sites\[0\]\.root: environment variable SPINE_AUDIT_TEST_UNSET_ROOT is not set"):
        validate_inputs(protocol)
    monkeypatch.setenv("SPINE_AUDIT_TEST_UNSET_ROOT", str(tmp_path))
    (tmp_path / "site-a").mkdir()
    validate_inputs(protocol)


def test_validate_inputs_names_an_unset_variable_in_a_site_config_path_and_in_its_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINE_AUDIT_DATA", raising=False)
    data = inline_site_protocol(".")
    data["sites"] = [{"config": str(REPO / "sites" / "cspineseg.yaml")}]
    with pytest.raises(ProtocolError, match=r"sites\[0\]\.root: environment variable SPINE_AUDIT_DATA is not set"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))
    data["sites"] = [{"config": "$SPINE_AUDIT_SITES/cspineseg.yaml"}]
    monkeypatch.delenv("SPINE_AUDIT_SITES", raising=False)
    with pytest.raises(ProtocolError, match=r"sites\[0\]\.config: environment variable SPINE_AUDIT_SITES is not set"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))
    data["sites"] = [{"config": "missing.yaml"}]
    with pytest.raises(ProtocolError, match=r"sites\[0\]\.config: site config file .*missing\.yaml' not found"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))


def test_validate_inputs_refuses_a_missing_root_folder_and_a_missing_model(tmp_path):
    with pytest.raises(SiteConfigError, match=r"sites\[0\]\.root: site 'hospital': folder .*nowhere' does not exist"):
        validate_inputs(protocol_from_dict(inline_site_protocol(str(tmp_path / "nowhere")), base_dir=tmp_path))
    data = inline_site_protocol(str(tmp_path))
    data["model"] = {"kind": "torchscript", "path": "model.ts", "labels": "spine_audit"}
    with pytest.raises(ModelSpecError, match=r"model\.path: kind 'torchscript' needs an existing file; found .*model\.ts'"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))
    data["model"] = {"kind": "nnunet", "path": "${SPINE_AUDIT_TEST_NO_MODEL}", "labels": "spine_audit"}
    with pytest.raises(ProtocolError, match=r"model\.path: environment variable SPINE_AUDIT_TEST_NO_MODEL is not set"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))
    data["model"] = {"kind": "torchscript", "path": "model.ts", "labels": "spine_audit", "inference": {"overlap": 2}}
    with pytest.raises(ModelSpecError, match=r"model\.inference\.overlap: expected a number in \[0, 1\); found 2"):
        validate_inputs(protocol_from_dict(data, base_dir=tmp_path))


def test_validate_inputs_requires_the_pseudonym_key_of_a_pseudonymizing_site(tmp_path, monkeypatch):
    monkeypatch.delenv("SPINE_AUDIT_PSEUDONYM_KEY", raising=False)
    protocol = protocol_from_dict(inline_site_protocol(str(tmp_path), pseudonymize=True), base_dir=tmp_path)
    with pytest.raises(PrivacyError, match=r"sites\[0\]\.options\.pseudonymize: .*set the environment variable SPINE_AUDIT_PSEUDONYM_KEY"):
        validate_inputs(protocol)


# ---- right after the sites stage ---------------------------------------------------------------


def sites_stage_manifest(n: int = 24) -> pd.DataFrame:
    """A manifest as the sites stage writes it: two sites, two vendors, both sexes, ages 30 to 76."""
    return pd.DataFrame(
        {
            "case_id": [f"s{i % 2}/c{i}" for i in range(n)],
            "patient_id": [f"p{i}" for i in range(n)],
            "site": [f"site-{i % 2}" for i in range(n)],
            "vendor": ["GE" if i % 2 else "Siemens" for i in range(n)],
            "field_strength": ["3T"] * n,
            "sex": ["F" if i % 3 else "M" for i in range(n)],
            "race": ["White"] * n,
            "ethnicity": ["Unknown"] * n,
            "age_years": [30.0 + 2 * i for i in range(n)],
            "scan_note": [f"/data/DOE_JOHN/{i}.nii.gz" for i in range(n)],
            "reading_code": [f"A{i:06d}" for i in range(n)],
            "scanner_room": ["1", "2"] * (n // 2),
        }
    )


def test_validate_against_manifest_accepts_the_demo_columns():
    validate_against_manifest(protocol_from_dict(demo_dict()), sites_stage_manifest())


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scanner"], r"subgroups\.columns\[7\]: 'scanner' is not a manifest column; columns are \[.*'vendor'"),
        ("subgroups.intersections", [["race", "gender"]], r"subgroups\.intersections\[0\]\[1\]: 'gender' is not a manifest column"),
        ("statistics.adjusted_model.factors", ["vendor", "bmi"], r"statistics\.adjusted_model\.factors\[1\]: 'bmi' is not a manifest column"),
        ("report.synthetic_columns", ["height"], r"report\.synthetic_columns\[0\]: 'height' is not a manifest column"),
        ("subgroups.reference_groups", {"sex": "Female"}, r"subgroups\.reference_groups\.sex: 'Female' is not a group of 'sex'; groups are \['F', 'M'\]"),
        ("subgroups.reference_groups", {"age_band": "0-17"}, r"subgroups\.reference_groups\.age_band: '0-17' is not a group of 'age_band'; groups are \["),
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scan_note"], r"subgroups\.columns\[7\]: column 'scan_note' holds file paths \(e\.g\. '0\.nii\.gz'\)"),
        ("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "reading_code"], r"subgroups\.columns\[7\]: column 'reading_code' has a different value for each of its 24 cases"),
    ],
    ids=["column", "intersection", "adjusted-factor", "synthetic-column", "reference-group", "reference-age-band", "path-values", "identifier-values"],
)
def test_validate_against_manifest_refuses_what_the_manifest_lacks(path, value, message):
    with pytest.raises(ProtocolError, match=message):
        validate_against_manifest(protocol_from_dict(with_change(path, value)), sites_stage_manifest())


def test_a_path_valued_column_message_never_repeats_the_identifying_folder():
    with pytest.raises(ProtocolError) as info:
        validate_against_manifest(protocol_from_dict(with_change("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scan_note"])), sites_stage_manifest())
    assert "DOE_JOHN" not in str(info.value)


def test_validate_against_manifest_leaves_an_empty_manifest_to_the_failure_report():
    validate_against_manifest(protocol_from_dict(with_change("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scanner"])), sites_stage_manifest().iloc[:0])


def test_an_ordinary_small_column_is_not_mistaken_for_an_identifier():
    validate_against_manifest(protocol_from_dict(with_change("subgroups.columns", ["site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band", "scanner_room"])), sites_stage_manifest())
