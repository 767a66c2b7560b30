"""The evidence package: a zip of everything a reviewer needs, with a sha256 of every file, and its check.

Contents: report.html, results.json, protocol.yaml, metrics.csv, failures.csv, tables/*, the de-identified
manifest (``manifest.csv`` without image/label/prediction paths, which can reveal folder names) and
``SHA256SUMS`` (``<sha256>  <path>`` per line, as ``sha256sum`` writes it). Images, predictions and the
synthetic cohort stay out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path

import pandas as pd

from audit.report.schema import validate_results

logger = logging.getLogger(__name__)

__all__ = ["PATH_COLUMNS", "REQUIRED_FILES", "VerifyResult", "build_package", "verify_package"]

PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
REQUIRED_FILES = ("report.html", "results.json", "protocol.yaml", "metrics.csv", "failures.csv", "manifest.csv")
CHECKSUMS = "SHA256SUMS"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_package`."""

    ok: bool
    problems: tuple[str, ...]
    files: tuple[str, ...] = ()


def _deidentified_manifest(path: Path) -> bytes:
    manifest = pd.read_csv(path)
    return manifest.drop(columns=[c for c in PATH_COLUMNS if c in manifest.columns]).to_csv(index=False, lineterminator="\n").encode("utf-8")


def build_package(run_dir: str | Path, out_zip: str | Path | None = None) -> Path:
    """Write the evidence package of a run folder; returns the zip path (default ``<run>/evidence-package.zip``)."""
    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"run folder {str(run_dir)!r} lacks {missing}; run the audit through the report stage first")
    out = Path(out_zip) if out_zip else run_dir / "evidence-package.zip"
    members: dict[str, bytes] = {}
    for name in REQUIRED_FILES:
        members[name] = _deidentified_manifest(run_dir / name) if name == "manifest.csv" else (run_dir / name).read_bytes()
    for table in sorted((run_dir / "tables").glob("*")):
        if table.is_file():
            members[f"tables/{table.name}"] = table.read_bytes()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(members.items()))
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(members.items()):
            zf.writestr(name, data)
        zf.writestr(CHECKSUMS, sums)
    tmp.replace(out)
    logger.info("evidence package: %s (%d files)", out, len(members))
    return out


def verify_package(zip_path: str | Path) -> VerifyResult:
    """Check every checksum, that no file is missing or extra, that the manifest has no paths, and the results schema."""
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        return VerifyResult(False, (f"{zip_path}: not a readable zip ({exc})",))
    with zf:
        names = set(zf.namelist())
        if CHECKSUMS not in names:
            return VerifyResult(False, (f"{CHECKSUMS} is missing",), tuple(sorted(names)))
        listed: dict[str, str] = {}
        for line in zf.read(CHECKSUMS).decode("utf-8").splitlines():
            digest, _, name = line.partition("  ")
            listed[name] = digest
        for name, digest in listed.items():
            if name not in names:
                problems.append(f"{name}: listed in {CHECKSUMS} but missing from the package")
            elif hashlib.sha256(zf.read(name)).hexdigest() != digest:
                problems.append(f"{name}: sha256 does not match {CHECKSUMS} (file changed after packaging)")
        for name in sorted(names - set(listed) - {CHECKSUMS}):
            problems.append(f"{name}: not listed in {CHECKSUMS}")
        for name in REQUIRED_FILES:
            if name not in names:
                problems.append(f"{name}: required file missing")
        if "manifest.csv" in names:
            header = pd.read_csv(io.BytesIO(zf.read("manifest.csv")), nrows=0).columns
            leaked = [c for c in PATH_COLUMNS if c in header]
            if leaked:
                problems.append(f"manifest.csv: holds file path columns {leaked}; the package manifest must be de-identified")
        if "results.json" in names:
            try:
                problems.extend(validate_results(json.loads(zf.read("results.json"))))
            except json.JSONDecodeError as exc:
                problems.append(f"results.json: not valid JSON ({exc})")
        return VerifyResult(not problems, tuple(problems), tuple(sorted(names)))
