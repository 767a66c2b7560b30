"""Federated audits: site bundles written where the images are, verified and merged centrally.

A **site bundle** is one zip file that carries no image, no path and no local identifier:

* ``metrics.csv``: the site's metric table;
* ``manifest.csv``: the de-identified manifest (no file paths, no raw metadata strings; case and patient
  ids replaced by keyed pseudonyms ``HMAC-SHA256(study key, ...)``, site names kept);
* ``failures.csv``: the site's failed cases (pseudonymized ids, absolute paths in messages redacted);
* ``bundle.json``: format version, site names, protocol sha256, model identity, software versions, the
  study key's fingerprint (an HMAC of a fixed text: equal keys give equal fingerprints, the key stays
  secret) and the sha256 of every other member.

Every site uses the same **study key** (environment variable :data:`STUDY_KEY_ENV`), so a patient seen at
two sites would get one pseudonym, and nobody without the key can reverse one. The central site verifies
every bundle against one protocol (:func:`verify_bundles`) and merges them (:func:`merge_bundles`) in the
protocol's site order with each site's rows in their original order, so the statistics of the merged
audit equal those of one central run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import UserError
from audit.records import MANIFEST_COLUMNS, CaseFailure, failure_table, validate_manifest, validate_metric_table

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_MEMBERS",
    "STUDY_KEY_ENV",
    "BundleError",
    "SiteBundle",
    "MergedAudit",
    "key_fingerprint",
    "pseudonymize_ids",
    "write_bundle",
    "read_bundle",
    "verify_bundles",
    "merge_bundles",
]

BUNDLE_FORMAT = "spine-audit-site-bundle/1"
STUDY_KEY_ENV = "SPINE_AUDIT_STUDY_KEY"
#: Data members of a bundle (``bundle.json`` lists their sha256).
BUNDLE_MEMBERS: tuple[str, ...] = ("manifest.csv", "metrics.csv", "failures.csv")
_INFO = "bundle.json"
_PATH_COLUMNS = ("image_path", "label_path", "prediction_path")
_FINGERPRINT_TEXT = b"spine-audit study key fingerprint v1"
_PSEUDONYM_HEX = 24
_MAX_MEMBER_BYTES = 2 << 30  # a bundle member larger than 2 GiB is refused before it is read
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)  # fixed member timestamps: equal contents give equal bundles


class BundleError(UserError, ValueError):
    """A bundle that is unreadable, altered, or does not belong to the protocol or study being merged."""


@dataclasses.dataclass(frozen=True)
class SiteBundle:
    """A verified bundle read back (:func:`read_bundle`)."""

    path: Path
    info: Mapping[str, Any]
    manifest: pd.DataFrame
    metrics: pd.DataFrame
    failures: tuple[CaseFailure, ...]

    @property
    def sites(self) -> tuple[str, ...]:
        """Site names of the bundle."""
        return tuple(self.info["sites"])


@dataclasses.dataclass(frozen=True)
class MergedAudit:
    """The merged contracts of several site bundles, ready for the statistics stage."""

    manifest: pd.DataFrame
    metrics: pd.DataFrame
    failures: tuple[CaseFailure, ...]
    model: Mapping[str, Any]
    bundles: tuple[Mapping[str, Any], ...]


def _key_bytes(study_key: str | bytes | None) -> bytes:
    key = study_key if study_key is not None else os.environ.get(STUDY_KEY_ENV, "")
    if not key:
        raise BundleError(f"study key: set the environment variable {STUDY_KEY_ENV} to the study's secret key (the same at every site)")
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    if len(key_bytes) < 16:
        raise BundleError(f"study key: must be at least 16 bytes long; found {len(key_bytes)}")
    return key_bytes


def key_fingerprint(study_key: str | bytes | None = None) -> str:
    """A public fingerprint of the study key (equal keys, equal fingerprints; the key cannot be recovered).

    Examples
    --------
    >>> key_fingerprint("0123456789abcdef") == key_fingerprint(b"0123456789abcdef")
    True
    """
    return hmac.new(_key_bytes(study_key), _FINGERPRINT_TEXT, hashlib.sha256).hexdigest()[:16]


def _pseudonym(key: bytes, kind: str, site: str, value: str) -> str:
    return hmac.new(key, f"{kind}\x1f{site}\x1f{value}".encode("utf-8"), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]


def pseudonymize_ids(
    manifest: pd.DataFrame, metrics: pd.DataFrame, failures: Sequence[CaseFailure], *, study_key: str | bytes | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, list[CaseFailure]]:
    """Replace case ids (``<site>/<pseudonym>``) and patient ids by keyed pseudonyms in all three tables.

    Patient pseudonyms do not depend on the site, so one patient keeps one id across sites; case pseudonyms
    do (two sites may reuse a local case id). Row order is kept.
    """
    key = _key_bytes(study_key)
    site_of = dict(zip(manifest["case_id"], manifest["site"]))
    site_of.update({f.case_id: f.site for f in failures if f.case_id not in site_of})

    def case(cid: str) -> str:
        site = str(site_of.get(cid, "Unknown"))
        return f"{site}/{_pseudonym(key, 'case', site, str(cid))}"

    out_manifest = manifest.assign(
        case_id=manifest["case_id"].map(case),
        patient_id=manifest["patient_id"].map(lambda p: _pseudonym(key, "patient", "", str(p))),
    )
    out_metrics = metrics.assign(case_id=metrics["case_id"].map(case))
    out_failures = [dataclasses.replace(f, case_id=case(f.case_id)) for f in failures]
    return out_manifest, out_metrics, out_failures


def _deidentified_manifest(manifest: pd.DataFrame, keep_extra: Sequence[str]) -> pd.DataFrame:
    from audit.harmonize.privacy import assert_no_identifiers

    extra = [c for c in keep_extra if c in manifest.columns and c not in MANIFEST_COLUMNS]
    assert_no_identifiers(extra, where="site bundle manifest")
    out = manifest.reindex(columns=[*MANIFEST_COLUMNS, *extra]).copy()
    for col in _PATH_COLUMNS:
        out[col] = ""
    return out


def _csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def write_bundle(
    path: str | Path,
    *,
    protocol: Any,
    manifest: pd.DataFrame,
    metrics: pd.DataFrame,
    failures: Sequence[CaseFailure],
    model: Mapping[str, Any],
    study_key: str | bytes | None = None,
    keep_columns: Sequence[str] = (),
) -> Path:
    """Write a site bundle zip (see the module docstring); returns its path.

    Parameters
    ----------
    path : path-like
        The zip file to write (its folder is created).
    protocol : Protocol
        The protocol the site ran; its sha256 goes into ``bundle.json``.
    manifest, metrics : pandas.DataFrame
        The site's manifest and metric table (validated before writing).
    failures : sequence of CaseFailure
    model : Mapping
        Model identity (``name``, ``kind``, ``sha256``, ``labels``) as in results.json.
    study_key : str or bytes, optional
        Defaults to the environment variable :data:`STUDY_KEY_ENV`.
    keep_columns : sequence of str
        Extra manifest columns the protocol analyses (checked against the identifying-column deny-list).
    """
    from audit.provenance import software_versions
    from audit.report.redact import redact_paths

    manifest = validate_manifest(manifest)
    metrics = validate_metric_table(metrics)
    pman, pmet, pfail = pseudonymize_ids(manifest, metrics, failures, study_key=study_key)
    pfail = [dataclasses.replace(f, error=redact_paths(f.error)) for f in pfail]
    pmet = pmet.assign(error=pmet["error"].map(lambda e: redact_paths(e) if isinstance(e, str) else e))
    members = {
        "manifest.csv": _csv_bytes(_deidentified_manifest(pman, keep_columns)),
        "metrics.csv": _csv_bytes(pmet),
        "failures.csv": _csv_bytes(failure_table(pfail)),
    }
    info = {
        "format": BUNDLE_FORMAT,
        "sites": sorted(set(manifest["site"].astype(str)) | {f.site for f in failures}),
        "protocol_sha256": protocol.sha256,
        "protocol_name": protocol.name,
        "protocol_version": protocol.version,
        "model": dict(model),
        "software": software_versions(),
        "study_key_fingerprint": key_fingerprint(study_key),
        "n_cases": int(len(manifest)),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in [(_INFO, json.dumps(info, indent=2, sort_keys=True).encode("utf-8")), *members.items()]:
            zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    logger.info("site bundle %s: %d cases of %s", path, len(manifest), ", ".join(info["sites"]))
    return path


def _member(zf: zipfile.ZipFile, name: str, where: str) -> bytes:
    try:
        entry = zf.getinfo(name)
    except KeyError:
        raise BundleError(f"{where}: member {name!r} is missing; a bundle holds {[_INFO, *BUNDLE_MEMBERS]}") from None
    if entry.file_size > _MAX_MEMBER_BYTES:
        raise BundleError(f"{where}: member {name!r} is {entry.file_size} bytes, over the limit of {_MAX_MEMBER_BYTES}")
    return zf.read(entry)


def read_bundle(path: str | Path) -> SiteBundle:
    """Open a bundle and check its format and member checksums (nothing is extracted to disk).

    Raises
    ------
    BundleError
        For a file that is not a bundle, a missing member, or a member whose sha256 differs from ``bundle.json``.
    """
    path = Path(path)
    where = f"bundle {path.name!r}"
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{where}: not a readable zip file ({type(exc).__name__}: {exc})") from None
    with zf:
        try:
            info = json.loads(_member(zf, _INFO, where))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{where}: bundle.json is not valid JSON ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: bundle.json format must be {BUNDLE_FORMAT!r}; found {info.get('format') if isinstance(info, dict) else info!r}")
        data = {name: _member(zf, name, where) for name in BUNDLE_MEMBERS}
    for name, blob in data.items():
        expected = info.get("sha256", {}).get(name)
        actual = hashlib.sha256(blob).hexdigest()
        if expected != actual:
            raise BundleError(f"{where}: {name} sha256 {actual} differs from the recorded {expected} (altered or corrupt)")
    manifest = pd.read_csv(io.BytesIO(data["manifest.csv"]), dtype={"case_id": str, "site": str, "patient_id": str}, keep_default_na=False, na_values={"field_strength_t": [""], "age_years": [""]})
    metrics = pd.read_csv(io.BytesIO(data["metrics.csv"]), dtype={"case_id": str, "structure": str, "metric": str, "status": str, "error": str})
    failures_table = pd.read_csv(io.BytesIO(data["failures.csv"]), dtype=str, keep_default_na=False)
    failures = tuple(CaseFailure(**{k: r[k] for k in ("case_id", "stage", "error", "error_type", "site")}) for r in failures_table.to_dict("records"))
    try:
        manifest = validate_manifest(manifest)
        metrics = validate_metric_table(metrics)
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    return SiteBundle(path, info, manifest, metrics, failures)


def verify_bundles(protocol: Any, bundles: Sequence[SiteBundle]) -> list[str]:
    """Every reason the bundles cannot be merged under ``protocol`` (empty when they can).

    Checks: each bundle's protocol sha256 equals the protocol's; one study key fingerprint and one model
    sha256 across bundles; no site in two bundles; no case id twice.
    """
    problems = []
    if not bundles:
        return ["no bundle given"]
    for b in bundles:
        if b.info.get("protocol_sha256") != protocol.sha256:
            problems.append(
                f"bundle {b.path.name!r}: protocol sha256 {b.info.get('protocol_sha256')} differs from {protocol.sha256} "
                f"({protocol.name} {protocol.version}); every site must run the same protocol file"
            )
    for field, what in (("study_key_fingerprint", "study key"), ("model", "model")):
        values = {json.dumps(b.info.get(field), sort_keys=True): b.path.name for b in bundles}
        if len(values) > 1:
            problems.append(f"bundles use different {what}s: " + "; ".join(f"{name}: {v}" for v, name in values.items()))
    seen: dict[str, str] = {}
    for b in bundles:
        for site in b.sites:
            if site in seen:
                problems.append(f"site {site!r} is in two bundles: {seen[site]!r} and {b.path.name!r}")
            seen[site] = b.path.name
    ids = pd.concat([b.manifest["case_id"] for b in bundles])
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        problems.append(f"case ids {dup[:5]} appear in more than one bundle")
    return problems


def merge_bundles(protocol: Any, bundles: Sequence[SiteBundle], *, site_order: Sequence[str] = ()) -> MergedAudit:
    """Verify and concatenate bundles: sites in ``site_order`` (then by name), each site's rows in order.

    Raises
    ------
    BundleError
        Listing every problem :func:`verify_bundles` found.
    """
    problems = verify_bundles(protocol, bundles)
    if problems:
        raise BundleError("cannot merge the bundles: " + "; ".join(problems))
    rank = {s: i for i, s in enumerate(site_order)}
    ordered = sorted(bundles, key=lambda b: min((rank.get(s, len(rank)), s) for s in b.sites))
    manifest = pd.concat([b.manifest for b in ordered], ignore_index=True)
    metrics = pd.concat([b.metrics for b in ordered], ignore_index=True)
    failures = tuple(f for b in ordered for f in b.failures)
    info = tuple({k: b.info[k] for k in ("sites", "n_cases", "software", "sha256")} | {"file": b.path.name} for b in ordered)
    return MergedAudit(validate_manifest(manifest), validate_metric_table(metrics), failures, dict(ordered[0].info["model"]), info)


# ---- run-folder glue (spine-audit run --bundle / spine-audit merge) --------------------------------


def bundle_run_folder(run_dir: str | Path, protocol: Any, *, out: str | Path | None = None, study_key: str | bytes | None = None) -> Path:
    """Write the site bundle of a run folder that finished the metrics stage (default ``<run>/site-bundle.zip``)."""
    from audit.runfolder import RunFolder

    folder = RunFolder(run_dir)
    return write_bundle(
        out or folder.root / "site-bundle.zip",
        protocol=protocol,
        manifest=folder.read_manifest(resolve=False),
        metrics=folder.read_metrics(),
        failures=folder.read_failures(),
        model={k: v for k, v in folder.read_model().items() if k != "device"},
        study_key=study_key,
        keep_columns=protocol.subgroups.columns,
    )


def merge_into_run_folder(protocol: Any, bundle_paths: Sequence[str | Path], run_dir: str | Path) -> MergedAudit:
    """Verify and merge bundles into a run folder whose stages up to ``metrics`` are complete.

    Statistics and the report then run from it (``run_audit(..., from_stage="stats")``).
    """
    import yaml

    from audit.protocol import protocol_to_dict
    from audit.runfolder import STAGES, RunFolder

    merged = merge_bundles(protocol, [read_bundle(p) for p in bundle_paths], site_order=_protocol_site_names(protocol))
    folder = RunFolder(run_dir)
    with folder.lock():
        folder.begin(protocol_sha256=protocol.sha256, start="sites", until="metrics")
        folder.write_protocol(yaml.safe_dump(protocol_to_dict(protocol), sort_keys=False))
        folder.write_manifest(merged.manifest)
        folder.write_model({**merged.model, "device": "site bundles"})
        folder.write_metrics(merged.metrics)
        folder.write_failures("metrics", merged.failures)
        folder.write_csv("bundles.csv", pd.DataFrame([{**{k: v for k, v in b.items() if k not in ("software", "sha256")}, "sites": " ".join(b["sites"])} for b in merged.bundles]))
        for stage in STAGES[: STAGES.index("metrics") + 1]:
            folder.complete(stage)
    return merged


def _protocol_site_names(protocol: Any) -> list[str]:
    """Site names in the protocol's order (inline ``name`` entries; config files are read by name only)."""
    return [str(entry["name"]) for entry in protocol.sites if "name" in entry]
