"""Privacy guards for the manifest: keyed pseudonyms and a deny-list of identifying columns.

* Patient ids can be replaced by ``HMAC-SHA256(key, site + "/" + patient_id)`` (hex, truncated to
  :data:`PSEUDONYM_HEX_CHARS` characters). The key comes from the environment variable
  :data:`PSEUDONYM_KEY_ENV`, never from a file in the repository; the same key gives the same pseudonym,
  so repeated audits stay joinable while the mapping cannot be reversed without the key.
* Columns whose names look identifying (names, birth dates, MRNs, addresses, ...) are refused.
* DICOM identifying tags are read only for the header values the adapter needs and never copied out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from audit.errors import PrivacyError
from audit.records import CaseFailure

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "PSEUDONYM_KEY_ENV",
    "PSEUDONYM_HEX_CHARS",
    "IDENTIFIER_COLUMNS",
    "PrivacyError",
    "pseudonymize",
    "pseudonymous_local_id",
    "scrub_identifier",
    "pseudonymous_failure",
    "scrub_case_paths",
    "identifying_columns",
    "is_identifier_or_path_column",
    "assert_no_identifiers",
]

PSEUDONYM_KEY_ENV = "SPINE_AUDIT_PSEUDONYM_KEY"
PSEUDONYM_HEX_CHARS = 20
#: Manifest columns that identify a case, a patient or a file; never a subgroup axis (their values would be
#: printed as group names in the report).
IDENTIFIER_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "image_path", "label_path", "prediction_path")
#: Column-name endings of identifiers and file paths (``study_id``, ``series_uid``, ``scan_path``, ``mask_file``).
_ID_OR_PATH_SUFFIX = re.compile(r"(^|_)(id|ids|uid|path|paths|file|files|filename|dir|folder)$", re.IGNORECASE)

_IDENTIFYING = re.compile(
    r"(^|_)(patient_?name|first_?name|last_?name|surname|given_?name|birth_?date|date_?of_?birth|dob|"
    r"birth|mrn|medical_?record|accession|address|phone|email|ssn|social_?security|"
    r"other_?patient_?ids?|patient_?address|referring_?physician)($|_)",
    re.IGNORECASE,
)


def pseudonymize(value: str, *, key: str | bytes | None = None, namespace: str = "") -> str:
    """Return a keyed, irreversible pseudonym of ``value`` (HMAC-SHA256, hex, 20 characters).

    Parameters
    ----------
    value : str
        The identifier (e.g. a patient id).
    key : str or bytes, optional
        Secret key; defaults to the environment variable ``SPINE_AUDIT_PSEUDONYM_KEY``.
    namespace : str
        Prefixed to ``value`` (the site name) so equal local ids at two sites stay distinct.

    Raises
    ------
    PrivacyError
        If no key is given and the environment variable is unset or empty.
    """
    if key is None:
        key = os.environ.get(PSEUDONYM_KEY_ENV, "")
        if not key:
            raise PrivacyError(
                f"pseudonymize: set the environment variable {PSEUDONYM_KEY_ENV} to a secret key "
                "(or set the site option pseudonymize: false)"
            )
    key_bytes = key.encode("utf-8") if isinstance(key, str) else key
    message = f"{namespace}/{value}" if namespace else str(value)
    return hmac.new(key_bytes, message.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def identifying_columns(columns: Iterable[str]) -> list[str]:
    """Return the column names that look identifying (``patient_name``, ``birth_date``, ``MRN``, ...)."""
    out = []
    for column in columns:
        snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(column)).replace(" ", "_").replace("-", "_")
        if _IDENTIFYING.search(snake):
            out.append(str(column))
    return out


def assert_no_identifiers(columns: Iterable[str], *, where: str = "manifest") -> None:
    """Raise :class:`PrivacyError` if any column name looks identifying."""
    bad = identifying_columns(columns)
    if bad:
        raise PrivacyError(f"{where}: columns {bad} look identifying (names, birth dates, MRNs) and may not enter the manifest")


def is_identifier_or_path_column(name: str) -> bool:
    """Whether a column holds identifiers or file paths (by its name), so it may never be a subgroup axis.

    Examples
    --------
    >>> [is_identifier_or_path_column(c) for c in ("patient_id", "scan_path", "PatientName", "vendor", "age_band")]
    [True, True, True, False, False]
    """
    text = str(name)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text).replace(" ", "_").replace("-", "_")
    return text in IDENTIFIER_COLUMNS or bool(_ID_OR_PATH_SUFFIX.search(snake)) or bool(identifying_columns([text]))


def pseudonymous_local_id(local_id: str, *, site: str, key: str | bytes | None = None) -> str:
    """The pseudonym that replaces a case's local id (the part of ``case_id`` after ``<site>/``).

    Keyed like :func:`pseudonymize` but in its own namespace (``case:<site>``), so a case id and a patient id
    that happen to be equal get different pseudonyms.

    Examples
    --------
    >>> pseudonymous_local_id("MRN0012345_DOE", site="site-A", key="secret")
    'c-4dc813be96ad04514723'
    """
    return "c-" + pseudonymize(local_id, key=key, namespace=f"case:{site}")


def scrub_identifier(text: str, identifier: str, pseudonym: str) -> str:
    """Replace every occurrence of ``identifier`` in ``text`` by ``pseudonym`` (error messages that quote an id
    or a file named after it).

    Examples
    --------
    >>> scrub_identifier("image file not found: /data/MRN001.nii.gz", "MRN001", "c-1f")
    'image file not found: /data/c-1f.nii.gz'
    """
    return text.replace(identifier, pseudonym) if identifier else text


def pseudonymous_failure(failure: CaseFailure, site: str, *, key: str | bytes | None = None) -> CaseFailure:
    """A site-stage failure of a pseudonymizing site with its local id replaced, in ``case_id`` and in the message.

    Placeholder ids such as ``site/<row 3>`` (a row without an id) are kept as they are. Without a key the id is
    withheld (``site/<id withheld: no pseudonym key>``), never shown.

    Examples
    --------
    >>> f = CaseFailure("s/MRN001", "adapter", "image file not found: /d/MRN001.nii.gz", "MissingImage", "s")
    >>> pseudonymous_failure(f, "s", key="k").error
    'image file not found: /d/c-e8d753673a149b03e008.nii.gz'
    """
    prefix = f"{site}/"
    local = failure.case_id[len(prefix):] if failure.case_id.startswith(prefix) else ""
    if not local or local.startswith("<"):
        return failure
    try:
        pseudonym = pseudonymous_local_id(local, site=site, key=key)
    except PrivacyError:  # no key (sites check, library use): withhold the id rather than show it
        pseudonym = "<id withheld: no pseudonym key>"
    return dataclasses.replace(failure, case_id=prefix + pseudonym, error=scrub_identifier(failure.error, local, pseudonym))


def _case_paths(manifest: pd.DataFrame, sites: Iterable[str]) -> dict[str, str]:
    """``{path: "<case_id> image"}`` for the image, label and prediction paths of the given sites' cases."""
    chosen = set(sites)
    labels: dict[str, str] = {}
    if not chosen or manifest.empty:
        return labels
    rows = manifest[manifest["site"].isin(chosen)]
    for role, column in (("image", "image_path"), ("label", "label_path"), ("prediction", "prediction_path")):
        if column not in rows:
            continue
        for case_id, path in zip(rows["case_id"], rows[column]):
            if isinstance(path, str) and path:
                labels[path] = f"<{case_id} {role}>"
    return labels


def scrub_case_paths(
    failures: Sequence[CaseFailure], metric_table: pd.DataFrame, manifest: pd.DataFrame, sites: Iterable[str]
) -> tuple[list[CaseFailure], pd.DataFrame]:
    """Replace the file paths of pseudonymizing sites' cases in failure messages by ``<case_id role>``.

    A file named after a patient (``/data/MRN001_DOE/t2.nii.gz``) would otherwise carry the identifier into
    failures.csv, metrics.csv, results.json and the report through an error message that quotes its path.

    Returns
    -------
    failures : list of CaseFailure
        With scrubbed messages.
    metric_table : pandas.DataFrame
        A copy whose ``error`` column is scrubbed the same way.
    """
    labels = _case_paths(manifest, sites)
    if not labels:
        return list(failures), metric_table
    ordered = sorted(labels, key=len, reverse=True)  # a longer path first, so no prefix of it is replaced alone

    def scrub(text: object) -> object:
        if not isinstance(text, str):
            return text
        for path in ordered:
            if path in text:
                text = text.replace(path, labels[path])
        return text

    table = metric_table.copy()
    if "error" in table:
        table["error"] = table["error"].map(scrub)
    return [dataclasses.replace(f, error=scrub(f.error)) for f in failures], table
