"""``pseudonymize: true`` hides case ids everywhere: a real run on a site whose case ids and file names carry an
MRN and a patient name, with one missing label (a site-stage failure) and one corrupt image (a check-stage
failure), then the evidence package; every output file and every package member is searched for them.
The same run checks ``--fail-on-criteria`` (exit 3) end to end."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.harmonize.privacy import PSEUDONYM_KEY_ENV
from audit.synthetic import DEFAULT_SITES, PlantedEffects, generate_cohort

MRN_PREFIX, NAME = "MRN70001", "DOE_JANE"
IDENTIFIERS = (MRN_PREFIX.encode(), NAME.encode())


def identifying_site(folder: Path) -> tuple[Path, dict]:
    """An 8-case nifti_table site whose case ids are ``MRN70001<n>_DOE_JANE_ses<k>`` (file names too) and whose patient
    ids are MRNs; the first case has no label file and the second a truncated image. Returns the root and its config."""
    cohort = folder / "cohort"
    generate_cohort(cohort, n_cases=8, seed=5, sites=DEFAULT_SITES[:1], planted=PlantedEffects(hard_site=None, age_effect=False))
    config = yaml.safe_load((cohort / "sites" / "site-A.yaml").read_text())
    source, root = cohort / "site-A", folder / "hospital"
    table = pd.read_csv(source / "metadata.csv", dtype=str, keep_default_na=False)
    renamed = {old: f"{MRN_PREFIX}{old[4:8]}_{NAME}_{old[-5:].replace('-', '')}" for old in table["case_id"]}
    for kind in ("images", "labels"):
        (root / kind).mkdir(parents=True)
        for old, new in renamed.items():
            shutil.copy(source / kind / f"{old}.nii.gz", root / kind / f"{new}.nii.gz")
    table["case_id"] = table["case_id"].map(renamed)
    table["patient_id"] = MRN_PREFIX + table["patient_id"].str[1:]
    table.to_csv(root / "metadata.csv", index=False)
    first, second = sorted(renamed.values())[:2]
    (root / "labels" / f"{first}.nii.gz").unlink()
    image = root / "images" / f"{second}.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    config.update(name="hospital", root=str(root))
    config["options"]["pseudonymize"] = True
    return root, config


def pseudonymized_protocol(folder: Path, site: dict) -> Path:
    protocol = {
        "name": "pseudonymized audit",
        "version": "1",
        "sites": [site],
        "model": {"name": "demo", "kind": "checkpoint", "path": "builtin:demo-unet"},
        "structures": ["vertebral_body", "intervertebral_disc", "spinal_canal", "spinal_cord"],
        "metrics": {"names": ["dice", "hd95"]},
        "subgroups": {"columns": ["site", "sex"]},
        "statistics": {"bootstrap_iterations": 100, "min_group_size": 2, "adjusted_model": {"enabled": False}},
        "acceptance": [{"id": "impossible", "metric": "dice", "threshold": 0.999}],
    }
    path = folder / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pseudonymized_run(tmp_path_factory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("pseudo")
    _, site = identifying_site(folder)
    protocol = pseudonymized_protocol(folder, site)
    run, package = folder / "run", folder / "evidence.zip"
    runner = CliRunner(env={PSEUDONYM_KEY_ENV: "a-secret-key-for-the-test"})
    result = runner.invoke(app, ["run", str(protocol), "--out", str(run), "--quiet", "--fail-on-criteria"])
    packaged = runner.invoke(app, ["package", str(run), "--out", str(package)])
    assert packaged.exit_code == 0, packaged.output
    return run, package, result


def test_fail_on_criteria_exits_3_after_a_complete_run(pseudonymized_run):
    run, _, result = pseudonymized_run
    assert result.exit_code == 3, result.output
    assert "Acceptance criteria not met: impossible fail" in result.stderr
    assert (run / "report.html").is_file() and (run / "results.json").is_file()


def test_no_output_file_and_no_package_member_holds_a_case_identifier(pseudonymized_run):
    run, package, _ = pseudonymized_run
    searched = 0
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run).as_posix()
        assert not any(i.decode() in rel for i in IDENTIFIERS), rel  # file names (gallery, predictions) too
        data = path.read_bytes()
        if rel == "manifest.csv":  # the run folder's manifest keeps the paths to the source files, by necessity
            table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
            data = table.drop(columns=["image_path", "label_path", "prediction_path"]).to_csv(index=False).encode()
        assert not [i for i in IDENTIFIERS if i in data], rel
        searched += 1
    with zipfile.ZipFile(package) as zf:
        for name in zf.namelist():
            assert not [i for i in IDENTIFIERS if i in name.encode() or i in zf.read(name)], name
            searched += 1
    assert searched >= 20


def test_every_case_is_counted_under_its_pseudonym_with_a_readable_reason(pseudonymized_run):
    run, _, _ = pseudonymized_run
    manifest = pd.read_csv(run / "manifest.csv", dtype=str)
    failures = pd.read_csv(run / "failures.csv", dtype=str)
    metrics = pd.read_csv(run / "metrics.csv", dtype=str)
    assert manifest["case_id"].str.fullmatch(r"hospital/c-[0-9a-f]{20}").all()
    assert manifest["patient_id"].str.fullmatch(r"[0-9a-f]{20}|unknown:hospital/c-[0-9a-f]{20}").all()  # the latter: failed before it had metadata
    assert metrics["case_id"].nunique() == 8 == len(manifest)  # nothing lost: 6 scored, 2 failed
    assert sorted(failures["error_type"]) == ["CorruptImageError", "MissingLabel"], failures
    missing = failures.loc[failures["error_type"] == "MissingLabel"].iloc[0]
    assert missing["error"].startswith("label file not found: ") and missing["case_id"].split("/")[1] in missing["error"]
    corrupt = failures.loc[failures["error_type"] == "CorruptImageError"].iloc[0]
    assert f"<{corrupt['case_id']} image>" in corrupt["error"]
