"""Age bands: one rule (audit.records.age_bands); `sites check`, Table 1 and the report show the same bands."""

from __future__ import annotations

import collections

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.sites import build_manifest, check_site, load_site_config
from audit.stats import add_age_band

#: Ages at and around the default edges [18, 40, 60, 75, 120), a redacted age and a missing one.
AGES = ["17", "18", "39.5", "40", "74.9", "75", ">89", "119", "120", ""]
#: Their bands, written by hand from the documented rule ([lo, hi) bands; outside the edges or missing: Unknown).
EXPECTED = {"Unknown": 3, "18-39": 2, "40-59": 1, "60-74": 1, "75+": 3}


def site_with_ages(tmp_path, ages):
    root = tmp_path / "site"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(len(ages)):
        for sub in ("images", "labels"):
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(root / sub / f"c{i}.nii.gz"))
    pd.DataFrame({"case_id": [f"c{i}" for i in range(len(ages))], "age": ages}).to_csv(root / "metadata.csv", index=False)
    config = {"name": "s", "format": "nifti_table", "root": str(root), "label_map": "spine_audit"}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(config))
    return load_site_config(config)


def test_sites_check_and_report_bands_are_the_same(tmp_path):
    config = site_with_ages(tmp_path, AGES)
    checked = check_site(config, load_voxels=False).counts["age_band"]
    manifest, failures = build_manifest([config])
    assert failures == []
    reported = dict(collections.Counter(add_age_band(manifest, (18, 40, 60, 75, 120))["age_band"]))
    assert checked == reported == EXPECTED


def test_sites_check_cli_uses_the_protocol_bands(tmp_path, repo_root):
    site_with_ages(tmp_path, AGES)
    protocol = yaml.safe_load((repo_root / "protocols" / "cspineseg_external.yaml").read_text())
    protocol["subgroups"]["age_bands"] = [18, 50, 120]
    custom = tmp_path / "protocol.yaml"
    custom.write_text(yaml.safe_dump(protocol))
    result = CliRunner().invoke(app, ["sites", "check", str(tmp_path / "site.yaml"), "--protocol", str(custom)])
    assert "18-49" in result.output and "50+" in result.output and "18-39" not in result.output, result.output
