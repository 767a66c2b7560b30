"""Checking an evidence package without trusting it (:func:`verify_package`, ``spine-audit verify``).

The package format (members, SHA256SUMS, the optional HMAC signature) is defined by :mod:`audit.report.package`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import io
import json
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

from audit.protocol import canonical_sha256
from audit.report.package import CHECKSUMS, PACKAGE_INFO, PATH_COLUMNS, REDACTED_TEXT, REQUIRED_FILES, SIGNATURE, sign_checksums
from audit.report.redact import redact_paths
from audit.report.schema import validate_results
from audit.runfolder import MANIFEST, PROTOCOL, RESULTS
from audit.yamlio import load_yaml

__all__ = ["MAX_MEMBER_BYTES", "VerifyResult", "verify_package"]

#: Largest member ``verify_package`` reads (uncompressed bytes, as declared and as read); larger is refused.
MAX_MEMBER_BYTES = 1 << 30
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
