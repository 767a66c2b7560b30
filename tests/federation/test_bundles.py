"""Site bundles: de-identified, checksummed, verified against one protocol and merged in the central order.

The run folder of the session's `spine-audit demo` fixture (16 cases, 4 sites) is split by site into bundles;
merging them must give back the run's own tables (after the same pseudonymization), row for row.
"""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pandas as pd
import pytest

from audit.federation import (
    BundleError,
    key_fingerprint,
    merge_bundles,
    pseudonymize_ids,
    read_bundle,
    verify_bundles,
    write_bundle,
)
from audit.protocol import load_protocol
from audit.records import CaseFailure

KEY = "study-key-for-tests-0123456789"
MODEL = {"name": "demo-unet", "kind": "checkpoint", "sha256": "ab" * 32, "labels": {"1": "vertebral_body"}}


@pytest.fixture(scope="module")
def central(demo_run):
    """The demo run's protocol, manifest, metric table and one planted failure (with an absolute path)."""
    run_dir, _ = demo_run
    protocol = load_protocol(run_dir / "protocol.yaml")
    manifest = pd.read_csv(run_dir / "manifest.csv", keep_default_na=False, na_values={"field_strength_t": [""], "age_years": [""]})
    metrics = pd.read_csv(run_dir / "metrics.csv")
    failure = CaseFailure(manifest["case_id"][0], "metrics", f"prediction file {run_dir}/predictions/x.nii.gz unreadable", "ValueError", manifest["site"][0])
    return protocol, manifest, metrics, [failure]


def write_site_bundles(central, folder, *, key=KEY, protocol=None):
    """One bundle per site, written in reverse site order (the merge must restore the central order)."""
    proto, manifest, metrics, failures = central
    paths = []
    for site in sorted(manifest["site"].unique(), reverse=True):
        ids = set(manifest.loc[manifest["site"] == site, "case_id"])
        paths.append(
            write_bundle(
                folder / f"{site}.zip",
                protocol=protocol or proto,
                manifest=manifest[manifest["site"] == site],
                metrics=metrics[metrics["case_id"].isin(ids)],
                failures=[f for f in failures if f.site == site],
                model=MODEL,
                study_key=key,
            )
        )
    return paths


def test_merged_bundles_equal_the_central_tables_row_for_row(central, tmp_path):
    proto, manifest, metrics, failures = central
    bundles = [read_bundle(p) for p in write_site_bundles(central, tmp_path)]
    merged = merge_bundles(proto, bundles)
    pman, pmet, pfail = pseudonymize_ids(manifest, metrics, failures, study_key=KEY)
    pd.testing.assert_frame_equal(merged.metrics.drop(columns="error"), pmet.drop(columns="error"))  # values bit-identical
    for col in ("case_id", "site", "patient_id", "vendor", "field_strength", "sex", "race", "ethnicity", "scanner_model"):
        assert merged.manifest[col].tolist() == pman[col].astype(str).tolist(), col
    np.testing.assert_array_equal(merged.manifest["age_years"].to_numpy(), pman["age_years"].to_numpy())
    assert [f.case_id for f in merged.failures] == [f.case_id for f in pfail]
    assert merged.model == MODEL


def test_bundle_holds_no_path_and_no_local_identifier(central, tmp_path):
    _, manifest, _, _ = central
    path = write_site_bundles(central, tmp_path)[0]
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["bundle.json", "failures.csv", "manifest.csv", "metrics.csv"]
        text = "".join(zf.read(n).decode() for n in zf.namelist())
    assert "/tmp" not in text and "nii.gz" not in text.replace("…/x.nii.gz", "")
    for local in manifest["case_id"].str.split("/").str[1]:
        assert local not in text
    for patient in manifest["patient_id"]:
        assert f",{patient}," not in text


def test_bundles_are_deterministic(central, tmp_path):
    a = write_site_bundles(central, tmp_path / "a")
    b = write_site_bundles(central, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_altered_member_fails_its_checksum(central, tmp_path):
    path = write_site_bundles(central, tmp_path)[0]
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["metrics.csv"] = members["metrics.csv"].replace(b",ok,", b",ok,", 1).replace(b"0.", b"1.", 1)
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(BundleError, match=r"metrics.csv sha256 [0-9a-f]{64} differs from the recorded [0-9a-f]{64} \(altered or corrupt\)"):
        read_bundle(path)


def test_bundle_of_another_protocol_or_key_is_refused(central, tmp_path):
    proto = central[0]
    other = dataclasses.replace(proto, statistics=dataclasses.replace(proto.statistics, seed=proto.statistics.seed + 1))
    good = [read_bundle(p) for p in write_site_bundles(central, tmp_path / "good")]
    bad_protocol = read_bundle(write_site_bundles(central, tmp_path / "p", protocol=other)[0])
    bad_key = read_bundle(write_site_bundles(central, tmp_path / "k", key="another-key-0123456789")[0])
    problems = verify_bundles(proto, [bad_protocol, *good[1:]])
    assert len(problems) == 1 and f"differs from {proto.sha256}" in problems[0] and "same protocol file" in problems[0]
    assert any("different study keys" in p for p in verify_bundles(proto, [bad_key, *good[1:]]))
    assert any("is in two bundles" in p for p in verify_bundles(proto, [*good, good[0]]))
    with pytest.raises(BundleError, match="cannot merge the bundles: .*different study keys"):
        merge_bundles(proto, [bad_key, *good[1:]])


def test_study_key_is_required_and_fingerprinted(monkeypatch, central, tmp_path):
    monkeypatch.delenv("SPINE_AUDIT_STUDY_KEY", raising=False)
    with pytest.raises(BundleError, match="set the environment variable SPINE_AUDIT_STUDY_KEY"):
        write_site_bundles(central, tmp_path, key=None)
    with pytest.raises(BundleError, match="at least 16 bytes"):
        key_fingerprint("short")
    monkeypatch.setenv("SPINE_AUDIT_STUDY_KEY", KEY)
    assert key_fingerprint() == key_fingerprint(KEY) != key_fingerprint(KEY + "x")


def test_not_a_bundle_is_a_clear_error(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"bundle 'x.zip': not a readable zip file"):
        read_bundle(tmp_path / "x.zip")
    with zipfile.ZipFile(tmp_path / "y.zip", "w") as zf:
        zf.writestr("bundle.json", "{}")
    with pytest.raises(BundleError, match=r"format must be 'spine-audit-site-bundle/1'"):
        read_bundle(tmp_path / "y.zip")
