"""The evidence package: a zip of everything a reviewer needs, with a sha256 of every file, and its check.

Contents: report.html, results.json, protocol.yaml, metrics.csv, failures.csv, tables/*, the de-identified
manifest (``manifest.csv`` without image/label/prediction paths, which can reveal folder names) and
``SHA256SUMS`` (``<sha256>  <path>`` per line, as ``sha256sum`` writes it). Images, predictions and the
synthetic cohort stay out. ``package.json`` records the package format, the run folder's name and which members
redaction changed. The packaged manifest is the canonical de-identified form (sorted columns) whose sha256 is
``data.manifest_sha256`` in results.json, and :func:`verify_package` checks that. Absolute paths left in free text (error messages in failures.csv and metrics.csv,
warnings in results.json) keep only their file name (:func:`audit.report.redact.redact_paths`); the protocol
(protocol.yaml and its copy in results.json) and the run command stay verbatim so that the protocol's sha256
can be checked.
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

from audit.report.redact import redact_paths, redact_strings
from audit.report.schema import validate_results
from audit.runfolder import FAILURES, MANIFEST, METRICS, PROTOCOL, REPORT, RESULTS, TABLES

logger = logging.getLogger(__name__)

__all__ = ["PATH_COLUMNS", "REQUIRED_FILES", "VerifyResult", "build_package", "deidentified_manifest", "verify_package"]

PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
REQUIRED_FILES = (REPORT, RESULTS, PROTOCOL, METRICS, FAILURES, MANIFEST)
CHECKSUMS = "SHA256SUMS"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_package`."""

    ok: bool
    problems: tuple[str, ...]
    files: tuple[str, ...] = ()


#: Text members whose absolute paths are redacted (besides the manifest, rebuilt without path columns).
REDACTED_TEXT = (METRICS, FAILURES)
#: results.json keys kept verbatim: the protocol (its sha256 must verify) and the run record (provenance).
VERBATIM_RESULTS_KEYS = ("protocol", "run")
#: Package metadata member: format version, source run, members changed by redaction.
PACKAGE_INFO = "package.json"
PACKAGE_FORMAT = "1.0"


def deidentified_manifest(manifest_csv: Path) -> str:
    """The package's manifest: path columns dropped, columns sorted (the canonical form whose sha256 is
    ``data.manifest_sha256`` in results.json), cells read and written as text so no value is re-formatted."""
    manifest = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    manifest = manifest.drop(columns=[c for c in PATH_COLUMNS if c in manifest.columns])
    return manifest.reindex(sorted(manifest.columns), axis=1).to_csv(index=False, lineterminator="\n")


def _redacted_results(text: str) -> str:
    results = json.loads(text)
    redacted = {k: v if k in VERBATIM_RESULTS_KEYS else redact_strings(v) for k, v in results.items()}
    return text if redacted == results else json.dumps(redacted, indent=1, ensure_ascii=False, allow_nan=False)


def _member(run_dir: Path, name: str) -> tuple[bytes, bool]:
    """A member's bytes and whether redaction changed them (unchanged text files are copied byte for byte)."""
    path = run_dir / name
    if name == MANIFEST:
        text = deidentified_manifest(path)
        redacted = redact_paths(text)
    elif name == RESULTS:
        text = path.read_text(encoding="utf-8")
        redacted = _redacted_results(text)
    elif name in REDACTED_TEXT:
        text = path.read_text(encoding="utf-8")
        redacted = redact_paths(text)
    else:
        return path.read_bytes(), False
    if redacted == text and name != MANIFEST:
        return path.read_bytes(), False
    return redacted.encode("utf-8"), redacted != text


def build_package(run_dir: str | Path, out_zip: str | Path | None = None) -> Path:
    """Write the evidence package of a run folder and return the zip path.

    Parameters
    ----------
    run_dir : path
        A run folder written through the report stage (``REQUIRED_FILES`` present).
    out_zip : path, optional
        Where to write; default ``<run>/evidence-package.zip``.

    Raises
    ------
    FileNotFoundError
        If a required file of the run folder is missing (the message lists them).
    """
    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"run folder {str(run_dir)!r} lacks {missing}; run the audit through the report stage first")
    out = Path(out_zip) if out_zip else run_dir / "evidence-package.zip"
    members: dict[str, bytes] = {}
    redacted: list[str] = []
    for name in REQUIRED_FILES:
        members[name], changed = _member(run_dir, name)
        if changed:
            redacted.append(name)
    for table in sorted((run_dir / TABLES).glob("*")):
        if table.is_file():
            members[f"{TABLES}/{table.name}"] = table.read_bytes()
    if redacted:
        logger.warning("evidence package: absolute paths shown as file names only in %s", redacted)
    info = {"format": PACKAGE_FORMAT, "run_folder": run_dir.name, "redacted": redacted, "excluded": ["images", "labels", "predictions", "cohort"]}
    members[PACKAGE_INFO] = json.dumps(info, indent=1).encode("utf-8")
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
    """Check every checksum, that no file is missing or extra, that the manifest has no path columns, that the
    manifest, metrics and failures hold no absolute paths, and the results.json schema."""
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
        if MANIFEST in names:
            header = pd.read_csv(io.BytesIO(zf.read(MANIFEST)), nrows=0).columns
            leaked = [c for c in PATH_COLUMNS if c in header]
            if leaked:
                problems.append(f"manifest.csv: holds file path columns {leaked}; the package manifest must be de-identified")
        for name in (MANIFEST, *REDACTED_TEXT):
            if name in names:
                text = zf.read(name).decode("utf-8", errors="replace")
                if redact_paths(text) != text:
                    problems.append(f"{name}: holds absolute file paths; the package must show only file names (…/name)")
        results = None
        if RESULTS in names:
            try:
                results = json.loads(zf.read(RESULTS))
                problems.extend(validate_results(results))
            except json.JSONDecodeError as exc:
                problems.append(f"results.json: not valid JSON ({exc})")
        problems.extend(_check_manifest_hash(zf, names, results))
        return VerifyResult(not problems, tuple(problems), tuple(sorted(names)))


def _check_manifest_hash(zf: zipfile.ZipFile, names: set[str], results: object) -> list[str]:
    """The packaged manifest must be the one the audit ran on: its sha256 equals ``data.manifest_sha256``
    (unless package.json records that redaction changed it)."""
    if MANIFEST not in names or not isinstance(results, dict):
        return []
    expected = results.get("data", {}).get("manifest_sha256") if isinstance(results.get("data"), dict) else None
    info = json.loads(zf.read(PACKAGE_INFO)) if PACKAGE_INFO in names else {}
    if not isinstance(expected, str) or MANIFEST in info.get("redacted", []):
        return []
    actual = hashlib.sha256(zf.read(MANIFEST)).hexdigest()
    if actual != expected:
        return [f"manifest.csv: sha256 {actual[:12]}… differs from results.json data.manifest_sha256 {expected[:12]}… (not the audited manifest)"]
    return []
