"""Fuzz corpus of bad protocol files, one kind per case, through `spine-audit run` as a user types it: exit status 2,
one line on stderr that names the problem, no traceback, no run folder; a protocol naming a column the data lacks
stops right after the sites stage (before inference) and keeps the manifest it read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app

REPO = Path(__file__).resolve().parents[2]
DEMO_TEXT = (REPO / "protocols" / "demo.yaml").read_text(encoding="utf-8")


def billion_laughs() -> str:
    """Nine levels of aliases, nine uses each: 387 million strings to whoever walks them (a few hundred bytes)."""
    lines = ["model:", "  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nname: *a9\n"


def demo_with(old: str, new: str) -> str:
    assert DEMO_TEXT.count(old) == 1, old
    return DEMO_TEXT.replace(old, new)


CORPUS = {
    "empty": ("", "expected a mapping at the top level; found NoneType"),
    "not-utf8": (b"name: \xff\xfe\x00", "cannot be read"),
    "top-level-list": ("- a\n- b\n", "expected a mapping at the top level; found list"),
    "python-tag": ("name: !!python/object/apply:os.system ['touch pwned']\n", "is not valid YAML"),
    "billion-laughs": (billion_laughs(), "holds more than 100,000 values"),
    "deep-nesting": ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than Python can parse"),
    "huge-file": ("description: '" + "x" * (1 << 20) + "'\n", "a protocol is at most 1,048,576"),
    "duplicate-key": (demo_with("  seed: 7\n", "  seed: 7\n  seed: 8\n"), "duplicate key 'seed'"),
    "nan-threshold": (demo_with("threshold: 0.80", "threshold: .nan"), "acceptance[0].threshold: expected a finite number; found nan"),
    "inf-margin": (demo_with("{dice: 0.03}", "{dice: .inf}"), "statistics.equivalence_margins.dice: expected a finite number; found inf"),
    "unknown-key": (demo_with("  alpha: 0.05\n", "  alfa: 0.05\n"), "statistics.alfa: unknown key"),
    "wrong-type": (demo_with("min_group_size: 5", "min_group_size: five"), "statistics.min_group_size: expected an integer; found 'five'"),
    "bad-choice": (demo_with("multiplicity: holm", "multiplicity: sidak"), "statistics.multiplicity: allowed values are"),
    "unknown-structure": (demo_with("spinal_cord]", "spinal_chord]"), "structures[3]: structure: unknown name 'spinal_chord'"),
    "unknown-metric": (demo_with("[dice, hd95, assd]", "[dice, hd95, asd]"), "metrics.names[2]: metric: unknown name 'asd'"),
    "primary-metric": (demo_with("primary_metric: dice", "primary_metric: iou"), "statistics.primary_metric: must be one of the protocol's metrics"),
    "duplicate-structure": (demo_with("[vertebral_body, intervertebral_disc,", "[vertebral_body, vertebral_body, intervertebral_disc,"), "structures: each entry may appear once"),
    "identifier-subgroup": (demo_with("intersections: [[race, sex]]", "intersections: [[race, patient_id]]"), "'patient_id' is an identifier or file-path column"),
    "absurd-bootstrap": (demo_with("bootstrap_iterations: 1000", "bootstrap_iterations: 1000000000"), "statistics.bootstrap_iterations: must be at most 100,000"),
    "absurd-cohort": (demo_with("n_cases: 48", "n_cases: 100000000"), "synthetic_cohort.n_cases: must be between 8 and 10,000"),
    "missing-model": (demo_with("path: builtin:demo-unet", "path: builtin:other-unet"), "model.path: allowed builtin models ['builtin:demo-unet']"),
    "unset-env-model": (demo_with("kind: checkpoint\n  path: builtin:demo-unet", "kind: nnunet\n  path: ${SPINE_AUDIT_FUZZ_UNSET}"), "model.path: environment variable SPINE_AUDIT_FUZZ_UNSET is not set"),
}


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_each_kind_of_bad_protocol_is_one_line_and_exit_2(tmp_path, monkeypatch, kind):
    monkeypatch.delenv("SPINE_AUDIT_FUZZ_UNSET", raising=False)
    content, expected = CORPUS[kind]
    path = tmp_path / "protocol.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, (result.exit_code, result.output)
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 1000  # a hostile value is shown abbreviated
    assert not (tmp_path / "run").exists() and not (tmp_path / "pwned").exists()


def test_a_column_the_data_lacks_stops_after_the_sites_stage_and_keeps_the_manifest(tmp_path):
    data = yaml.safe_load(DEMO_TEXT)
    data["synthetic_cohort"]["n_cases"] = 8
    data["subgroups"]["columns"].append("scanner")
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(run), "--quiet"])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: subgroups.columns[7]: 'scanner' is not a manifest column; columns are ['age_band', 'age_redacted', 'age_years',")
    assert "patient_id" not in lines[0] and "image_path" not in lines[0]  # identifier and path columns are not offered
    assert len(pd.read_csv(run / "manifest.csv")) == 8  # nothing lost: every case the sites stage read is recorded
    assert not (run / "predictions").exists() and not (run / "metrics.csv").exists()  # stopped before inference
