"""Provenance and cohort summaries that go into results.json.

Pure helpers: hashing, software versions, the cohort table ("Table 1"), metadata completeness and
detection counts. No I/O apart from hashing files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.records import NOT_ASSESSED, UNKNOWN

logger = logging.getLogger(__name__)

__all__ = [
    "sha256_file",
    "sha256_table",
    "software_versions",
    "TABLE1_AXES",
    "cohort_table",
    "metadata_completeness",
    "detection_counts",
    "annotation_matrix",
    "json_ready",
]

_PACKAGES = ("spine-audit", "torch", "monai", "numpy", "scipy", "pandas", "statsmodels", "nibabel", "scikit-learn", "matplotlib", "seaborn", "jinja2", "pydicom")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_table(table: pd.DataFrame) -> str:
    """sha256 of a table's canonical CSV form (sorted columns, rows in their order, UTF-8)."""
    canonical = table.reindex(sorted(table.columns), axis=1).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def software_versions(packages: Iterable[str] = _PACKAGES) -> dict[str, Any]:
    """Python and package versions (``"not installed"`` when absent)."""
    versions: dict[str, str] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"python": platform.python_version(), "platform": platform.platform(terse=True), "packages": versions}


#: The axes of "Table 1" (segmentation and grading reports), in display order.
TABLE1_AXES: tuple[str, ...] = ("site", "vendor", "field_strength", "sex", "race", "ethnicity", "age_band")


def cohort_table(manifest: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """"Table 1": cases and patients per group of every axis, with the Unknown (missing) count kept.

    Returns
    -------
    pandas.DataFrame
        Columns ``axis, group, n_cases, n_patients, percent`` (percent of cases within the axis).
    """
    rows = []
    total = len(manifest)
    for axis in axes:
        if axis not in manifest.columns:
            continue
        values = manifest[axis].astype("object").where(manifest[axis].notna(), UNKNOWN).astype(str)
        for group, idx in values.groupby(values).groups.items():
            sub = manifest.loc[idx]
            rows.append(
                {
                    "axis": axis,
                    "group": group,
                    "n_cases": int(len(sub)),
                    "n_patients": int(sub["patient_id"].nunique()),
                    "percent": 100.0 * len(sub) / total if total else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["axis", "group", "n_cases", "n_patients", "percent"])


def metadata_completeness(manifest: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Known versus Unknown/missing values per site and metadata column."""
    rows = []
    for site, sub in manifest.groupby("site", sort=True):
        for column in columns:
            if column not in sub.columns:
                continue
            values = sub[column]
            unknown = values.isna() | (values.astype(str) == UNKNOWN)
            rows.append({"site": site, "column": column, "known": int((~unknown).sum()), "unknown": int(unknown.sum())})
    return pd.DataFrame(rows, columns=["site", "column", "known", "unknown"])


def detection_counts(metric_table: pd.DataFrame) -> pd.DataFrame:
    """Cases per structure and status (one metric's rows, so each case counts once)."""
    if metric_table.empty:
        return pd.DataFrame(columns=["structure", "status", "n"])
    first_metric = metric_table["metric"].iloc[0]
    sub = metric_table[metric_table["metric"] == first_metric]
    counts = sub.groupby(["structure", "status"]).size().rename("n").reset_index()
    counts["n"] = counts["n"].astype(int)
    return counts


def annotation_matrix(metric_table: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Site x structure: whether the site's reference annotates the structure, with case counts.

    Columns ``site, structure, annotated, n_cases, n_assessed, n_not_assessed`` (one metric's rows, so each case
    counts once); ``annotated`` is False when the site's cases are ``not_assessed`` for the structure.

    Examples
    --------
    >>> m = pd.DataFrame({"case_id": ["a/1", "a/1"], "structure": ["vertebral_body", "spinal_cord"], "metric": "dice",
    ...                   "status": ["ok", "not_assessed"]})
    >>> annotation_matrix(m, pd.DataFrame({"case_id": ["a/1"], "site": ["a"]}))["annotated"].tolist()
    [True, False]
    """
    columns = ["site", "structure", "annotated", "n_cases", "n_assessed", "n_not_assessed"]
    if metric_table.empty:
        return pd.DataFrame(columns=columns)
    sub = metric_table[metric_table["metric"] == metric_table["metric"].iloc[0]]
    sub = sub.merge(manifest[["case_id", "site"]], on="case_id", how="left")
    sub = sub.assign(site=sub["site"].astype(object).where(sub["site"].notna(), UNKNOWN), skipped=sub["status"] == NOT_ASSESSED)
    order = list(dict.fromkeys(metric_table["structure"]))
    rows = []
    for (site, structure), group in sub.groupby(["site", "structure"], sort=False):
        n_skipped = int(group["skipped"].sum())
        rows.append({"site": site, "structure": structure, "annotated": n_skipped == 0, "n_cases": int(len(group)),
                     "n_assessed": int(len(group) - n_skipped), "n_not_assessed": n_skipped})  # fmt: skip
    out = pd.DataFrame(rows, columns=columns)
    out["_order"] = out["structure"].map({s: i for i, s in enumerate(order)})
    return out.sort_values(["site", "_order"], ignore_index=True).drop(columns="_order")


def json_ready(value: Any) -> Any:
    """Make nested data JSON-safe: NaN -> None, +/-inf -> "inf"/"-inf", numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, pd.DataFrame):
        return json_ready(value.to_dict(orient="records"))
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any) -> str:
    """Serialize with :func:`json_ready` applied, pretty-printed, keys in insertion order."""
    return json.dumps(json_ready(value), indent=2, ensure_ascii=False, allow_nan=False)
