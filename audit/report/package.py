"""The evidence package: a zip of everything a reviewer needs, with a sha256 of every file, and its check.

Contents: report.html, results.json, protocol.yaml, metrics.csv, failures.csv, tables/*, the de-identified
manifest (``manifest.csv`` without image/label/prediction paths, which can reveal folder names) and
``SHA256SUMS`` (``<sha256>  <path>`` per line, as ``sha256sum`` writes it). Images, predictions and the
synthetic cohort stay out. ``package.json`` records the package format, the run folder's name and which members
redaction changed. With a key (``spine-audit package --key FILE``), ``SHA256SUMS.hmac-sha256`` holds
HMAC-SHA256(key, SHA256SUMS) in hex, so that editing a member and re-hashing SHA256SUMS consistently is detected
by ``spine-audit verify --key FILE``; without the key nobody can forge it. The packaged manifest is the canonical de-identified form (sorted columns) whose sha256 is
``data.manifest_sha256`` in results.json, and :func:`verify_package` checks that. Absolute paths left in free text (error messages in failures.csv and metrics.csv,
warnings in results.json) keep only their file name (:func:`audit.report.redact.redact_paths`); the protocol
(protocol.yaml and its copy in results.json) and the run command stay verbatim so that the protocol's sha256
can be checked.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from audit.errors import IncompleteRunError, UserError
from audit.protocol import canonical_sha256
from audit.report.redact import redact_paths, redact_strings
from audit.report.schema import validate_results
from audit.runfolder import FAILURES, MANIFEST, METRICS, PROTOCOL, REPORT, RESULTS, TABLES, VERTEBRAE, VERTEBRAE_SUMMARY
from audit.yamlio import load_yaml

logger = logging.getLogger(__name__)

__all__ = [
    "PATH_COLUMNS",
    "REQUIRED_FILES",
    "OPTIONAL_FILES",
    "SIGNATURE",
    "MAX_MEMBER_BYTES",
    "MIN_KEY_BYTES",
    "VerifyResult",
    "build_package",
    "deidentified_manifest",
    "read_key",
    "sign_checksums",
    "verify_package",
]

PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
REQUIRED_FILES = (REPORT, RESULTS, PROTOCOL, METRICS, FAILURES, MANIFEST)
#: Members added when the run wrote them (the per-vertebra rows and summary of a CT labelling audit).
OPTIONAL_FILES = (VERTEBRAE, VERTEBRAE_SUMMARY)
CHECKSUMS = "SHA256SUMS"
#: Member holding HMAC-SHA256(key, SHA256SUMS) as hex when the package was written with a key.
SIGNATURE = "SHA256SUMS.hmac-sha256"
#: Largest member ``verify_package`` reads (uncompressed bytes, as declared and as read); larger is refused.
MAX_MEMBER_BYTES = 1 << 30
#: Shortest accepted signing key (bytes, after stripping surrounding whitespace).
MIN_KEY_BYTES = 16
_CHUNK = 1 << 20
_SUM_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64})  (?P<name>.+)$")


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_package`."""

    ok: bool
    problems: tuple[str, ...]
    files: tuple[str, ...] = ()
    #: ``"signature valid"``, ``"signed, signature not checked (no key given)"`` or ``"not signed"``.
    signature: str = "not signed"


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


def _unsafe_name(name: str) -> bool:
    """An absolute path, a drive letter, a ``..`` part or a NUL: never read, even when listed."""
    parts = re.split(r"[\\/]", name)
    return not name or name.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", name)) or ".." in parts or "\x00" in name


class _TooLarge(Exception):
    pass


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, sink=None) -> bytes:
    """Stream a member in 1 MiB chunks; stop beyond ``limit`` bytes (:class:`_TooLarge`); the data, or b"" with a sink."""
    parts: list[bytes] = []
    total = 0
    with zf.open(info) as handle:
        while chunk := handle.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _TooLarge(total)
            if sink is None:
                parts.append(chunk)
            else:
                sink(chunk)
    return b"".join(parts)


def verify_package(zip_path: str | Path, *, key: bytes | None = None, max_member_bytes: int = MAX_MEMBER_BYTES) -> VerifyResult:
    """Check an evidence package without trusting it.

    Member names that are absolute or contain ``..`` are refused (never read), even when listed; members above
    ``max_member_bytes`` (declared or read) are refused; every hash is computed by streaming 1 MiB chunks, so a
    decompression bomb costs neither memory nor more than the limit's time. Then: every checksum, no file missing
    or extra, the manifest has no path columns, manifest, metrics and failures hold no absolute paths, the
    results.json schema, the manifest's sha256 against ``data.manifest_sha256``, protocol.yaml's canonical sha256
    against ``protocol_sha256`` (and the protocol copy in results.json), and with ``key`` the HMAC signature of
    SHA256SUMS.

    Parameters
    ----------
    zip_path : path
        The package.
    key : bytes, optional
        The signing key (:func:`read_key`); when given, a missing or wrong signature is a problem.
    max_member_bytes : int
        Largest uncompressed member read (default :data:`MAX_MEMBER_BYTES`, 1 GiB).
    """
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        return VerifyResult(False, (f"{zip_path}: not a readable zip ({exc})",))
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        readable: dict[str, zipfile.ZipInfo] = {}
        counts = collections.Counter(names)
        problems.extend(f"{name!r}: appears {n} times in the zip; refused" for name, n in sorted(counts.items()) if n > 1)
        for info in infos:
            if _unsafe_name(info.filename):
                problems.append(f"{info.filename!r}: unsafe member name (absolute path or '..'); refused, not read")
            elif info.file_size > max_member_bytes:
                problems.append(f"{info.filename}: declares {info.file_size:,} bytes, above the limit of {max_member_bytes:,}; refused, not read")
            elif counts[info.filename] == 1:
                readable[info.filename] = info

        def read(name: str) -> bytes | None:
            if name not in readable:
                return None
            try:
                return _read_member(zf, readable[name], max_member_bytes)
            except _TooLarge:
                problems.append(f"{name}: larger than the limit of {max_member_bytes:,} bytes; refused")
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                problems.append(f"{name}: cannot be read ({exc})")
            readable.pop(name, None)
            return None

        sums = read(CHECKSUMS)
        if sums is None:
            problems.append(f"{CHECKSUMS} is missing or unreadable")
            return VerifyResult(False, tuple(problems), tuple(sorted(set(names))))
        listed = _parse_checksums(sums, problems)
        for name, digest in listed.items():
            if _unsafe_name(name):
                problems.append(f"{name!r}: unsafe name listed in {CHECKSUMS}; refused, not read")
            elif name not in names:
                problems.append(f"{name}: listed in {CHECKSUMS} but missing from the package")
            elif name in readable:
                actual = _streamed_sha256(zf, readable[name], max_member_bytes, problems)
                if actual is not None and actual != digest:
                    problems.append(f"{name}: sha256 does not match {CHECKSUMS} (file changed after packaging)")
        for name in sorted(set(names) - set(listed) - {CHECKSUMS, SIGNATURE}):
            if not _unsafe_name(name):
                problems.append(f"{name}: not listed in {CHECKSUMS}")
        for name in REQUIRED_FILES:
            if name not in names:
                problems.append(f"{name}: required file missing")
        texts = {name: read(name) for name in (MANIFEST, *REDACTED_TEXT, RESULTS, PROTOCOL, PACKAGE_INFO)}
        if texts[MANIFEST] is not None:
            header = pd.read_csv(io.BytesIO(texts[MANIFEST]), nrows=0).columns
            leaked = [c for c in PATH_COLUMNS if c in header]
            if leaked:
                problems.append(f"manifest.csv: holds file path columns {leaked}; the package manifest must be de-identified")
        for name in (MANIFEST, *REDACTED_TEXT):
            if texts[name] is not None:
                text = texts[name].decode("utf-8", errors="replace")
                if redact_paths(text) != text:
                    problems.append(f"{name}: holds absolute file paths; the package must show only file names (…/name)")
        results = None
        if texts[RESULTS] is not None:
            try:
                results = json.loads(texts[RESULTS])
                problems.extend(validate_results(results))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(f"results.json: not valid JSON ({exc})")
        problems.extend(_check_manifest_hash(texts[MANIFEST], texts[PACKAGE_INFO], results))
        problems.extend(_check_protocol_hash(texts[PROTOCOL], results))
        signature = _check_signature(sums, read(SIGNATURE) if SIGNATURE in names else None, key, problems)
        return VerifyResult(not problems, tuple(problems), tuple(sorted(set(names))), signature)


def _parse_checksums(sums: bytes, problems: list[str]) -> dict[str, str]:
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.decode("utf-8", errors="replace").splitlines(), start=1):
        match = _SUM_LINE.match(line)
        if match is None:
            problems.append(f"{CHECKSUMS} line {number}: expected '<64 hex digits>  <name>'; found {line[:80]!r}")
        elif match["name"] in listed:
            problems.append(f"{CHECKSUMS}: {match['name']} is listed twice")
        else:
            listed[match["name"]] = match["digest"]
    return listed


def _streamed_sha256(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, problems: list[str]) -> str | None:
    digest = hashlib.sha256()
    try:
        _read_member(zf, info, limit, sink=digest.update)
    except _TooLarge:
        problems.append(f"{info.filename}: larger than the limit of {limit:,} bytes; refused")
        return None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        problems.append(f"{info.filename}: cannot be read ({exc})")
        return None
    return digest.hexdigest()


def _check_signature(sums: bytes, signature: bytes | None, key: bytes | None, problems: list[str]) -> str:
    if key is None:
        return "not signed" if signature is None else "signed, signature not checked (no key given)"
    if signature is None:
        problems.append(f"{SIGNATURE}: missing, but a key was given: the package is not signed (or its signature was removed)")
        return "not signed"
    expected = sign_checksums(sums, key)
    if not hmac.compare_digest(signature.decode("ascii", errors="replace").strip(), expected):
        problems.append(f"{SIGNATURE}: does not match {CHECKSUMS} under this key (the package changed after signing, or another key)")
        return "signature invalid"
    return "signature valid"


def _check_protocol_hash(protocol_yaml: bytes | None, results: object) -> list[str]:
    """protocol.yaml is the canonical form: its sha256 equals ``protocol_sha256`` in results.json, as does the
    protocol copy in results.json."""
    if protocol_yaml is None or not isinstance(results, Mapping):
        return []
    expected = results.get("protocol_sha256")
    if not isinstance(expected, str):
        return ["results.json: protocol_sha256 is missing"]
    problems = []
    try:
        data = load_yaml(protocol_yaml.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        return [f"protocol.yaml: not valid YAML ({' '.join(str(exc).split())})"]
    if not isinstance(data, Mapping) or canonical_sha256(data) != expected:
        problems.append(f"protocol.yaml: canonical sha256 differs from results.json protocol_sha256 {expected[:12]}… (not the protocol the audit ran)")
    copy = results.get("protocol")
    if isinstance(copy, Mapping) and canonical_sha256(copy) != expected:
        problems.append(f"results.json: the protocol copy's sha256 differs from protocol_sha256 {expected[:12]}…")
    return problems


def _check_manifest_hash(manifest: bytes | None, package_info: bytes | None, results: object) -> list[str]:
    """The packaged manifest must be the one the audit ran on: its sha256 equals ``data.manifest_sha256``
    (unless package.json records that redaction changed it)."""
    if manifest is None or not isinstance(results, dict):
        return []
    expected = results.get("data", {}).get("manifest_sha256") if isinstance(results.get("data"), dict) else None
    try:
        info = json.loads(package_info) if package_info is not None else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return [f"{PACKAGE_INFO}: not valid JSON"]
    redacted = info.get("redacted", []) if isinstance(info, dict) else []
    if not isinstance(expected, str) or MANIFEST in redacted:
        return []
    actual = hashlib.sha256(manifest).hexdigest()
    if actual != expected:
        return [f"manifest.csv: sha256 {actual[:12]}… differs from results.json data.manifest_sha256 {expected[:12]}… (not the audited manifest)"]
    return []
