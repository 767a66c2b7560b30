"""The evidence package: a zip of everything a reviewer needs, with a sha256 of every file (checked by :mod:`audit.report.verify`).

Contents: report.html, results.json, protocol.yaml, metrics.csv, failures.csv, tables/*, the de-identified
manifest (``manifest.csv`` without image/label/prediction paths, which can reveal folder names) and
``SHA256SUMS`` (``<sha256>  <path>`` per line, as ``sha256sum`` writes it). Images, predictions and the
synthetic cohort stay out. ``package.json`` records the package format, the run folder's name and which members
redaction changed. With a key (``spine-audit package --key FILE``), ``SHA256SUMS.hmac-sha256`` holds
HMAC-SHA256(key, SHA256SUMS) in hex, so that editing a member and re-hashing SHA256SUMS consistently is detected
by ``spine-audit verify --key FILE``; without the key nobody can forge it. The packaged manifest is the canonical de-identified form (sorted columns) whose sha256 is
``data.manifest_sha256`` in results.json, and :func:`audit.report.verify.verify_package` checks that. Absolute paths left in free text (error messages in failures.csv and metrics.csv,
warnings in results.json) keep only their file name (:func:`audit.report.redact.redact_paths`); the protocol
(protocol.yaml and its copy in results.json) and the run command stay verbatim so that the protocol's sha256
can be checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import zipfile
from pathlib import Path

import pandas as pd

from audit.errors import IncompleteRunError, UserError
from audit.report.redact import redact_paths, redact_strings
from audit.runfolder import FAILURES, MANIFEST, METRICS, PROTOCOL, REPORT, RESULTS, TABLES, VERTEBRAE, VERTEBRAE_SUMMARY

logger = logging.getLogger(__name__)

__all__ = [
    "PATH_COLUMNS",
    "REQUIRED_FILES",
    "OPTIONAL_FILES",
    "SIGNATURE",
    "MIN_KEY_BYTES",
    "build_package",
    "deidentified_manifest",
    "read_key",
    "sign_checksums",
]

PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
REQUIRED_FILES = (REPORT, RESULTS, PROTOCOL, METRICS, FAILURES, MANIFEST)
#: Members added when the run wrote them (the per-vertebra rows and summary of a CT labelling audit).
OPTIONAL_FILES = (VERTEBRAE, VERTEBRAE_SUMMARY)
CHECKSUMS = "SHA256SUMS"
#: Member holding HMAC-SHA256(key, SHA256SUMS) as hex when the package was written with a key.
SIGNATURE = "SHA256SUMS.hmac-sha256"
#: Shortest accepted signing key (bytes, after stripping surrounding whitespace).
MIN_KEY_BYTES = 16


#: Text members whose absolute paths are redacted (besides the manifest, rebuilt without path columns).
REDACTED_TEXT = (METRICS, FAILURES, VERTEBRAE, VERTEBRAE_SUMMARY)
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


def read_key(path: str | Path) -> bytes:
    """Read a signing key file: its bytes without surrounding whitespace, at least :data:`MIN_KEY_BYTES` long.

    Raises
    ------
    UserError
        If the file cannot be read or the key is too short.
    """
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise UserError(f"--key: key file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    if len(key) < MIN_KEY_BYTES:
        raise UserError(
            f"--key: key file {str(path)!r} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed "
            "(e.g. `head -c 32 /dev/urandom | base64 > audit.key`)"
        )
    return key


def sign_checksums(checksums: bytes, key: bytes) -> str:
    """HMAC-SHA256 of the SHA256SUMS bytes under ``key``, as hex.

    Examples
    --------
    >>> sign_checksums(b"", b"key")  # the same as hmac.new(b"key", b"", "sha256").hexdigest()
    '5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0'
    """
    return hmac.new(key, checksums, hashlib.sha256).hexdigest()


def build_package(run_dir: str | Path, out_zip: str | Path | None = None, *, key: bytes | None = None) -> Path:
    """Write the evidence package of a run folder and return the zip path.

    Parameters
    ----------
    run_dir : path
        A run folder written through the report stage (``REQUIRED_FILES`` present).
    out_zip : path, optional
        Where to write; default ``<run>/evidence-package.zip``.
    key : bytes, optional
        Signing key (:func:`read_key`): adds :data:`SIGNATURE`, HMAC-SHA256 of SHA256SUMS.

    Raises
    ------
    IncompleteRunError
        (a ``FileNotFoundError``) if a required file of the run folder is missing (the message lists them).
    """
    run_dir = Path(run_dir)
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise IncompleteRunError(f"run folder {str(run_dir)!r} lacks {missing}; run the audit through the report stage first")
    out = Path(out_zip) if out_zip else run_dir / "evidence-package.zip"
    members: dict[str, bytes] = {}
    redacted: list[str] = []
    for name in (*REQUIRED_FILES, *(f for f in OPTIONAL_FILES if (run_dir / f).is_file())):
        members[name], changed = _member(run_dir, name)
        if changed:
            redacted.append(name)
    for table in sorted((run_dir / TABLES).glob("*")):
        if table.is_file():
            members[f"{TABLES}/{table.name}"] = table.read_bytes()
    if redacted:
        logger.warning("evidence package: absolute paths shown as file names only in %s", redacted)
    info = {
        "format": PACKAGE_FORMAT,
        "run_folder": run_dir.name,
        "redacted": redacted,
        "excluded": ["images", "labels", "predictions", "cohort"],
        "signature": "hmac-sha256" if key else None,
    }
    members[PACKAGE_INFO] = json.dumps(info, indent=1).encode("utf-8")
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(members.items()))
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(members.items()):
            zf.writestr(name, data)
        zf.writestr(CHECKSUMS, sums)
        if key:
            zf.writestr(SIGNATURE, sign_checksums(sums.encode("utf-8"), key) + "\n")
    tmp.replace(out)
    logger.info("evidence package: %s (%d files)", out, len(members))
    return out
