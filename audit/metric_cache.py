"""Cache of per-case metric rows, keyed by what they depend on, so a rerun skips cases already scored.

The key hashes the reference label file's bytes, the prediction file's bytes, both label maps and the
evaluation settings (structures, metrics, empty-mask policy) plus :data:`METRIC_CACHE_VERSION`. An entry is
a small JSON document written atomically; an unreadable entry is recomputed. Failures are never cached, so
a case that failed (e.g. a file that was being copied) is tried again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.evaluate import EvaluationSettings, evaluate_case
from audit.fileio import atomic_write_text
from audit.ontology import LabelMap
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = ["METRIC_CACHE_VERSION", "evaluate_case_cached", "metric_cache_key"]

#: Bump when metric code changes values for the same inputs.
METRIC_CACHE_VERSION = 1
_CHUNK = 1 << 20


def _file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _label_map_doc(label_map: LabelMap) -> dict[str, Any]:
    return {"values": {str(int(k)): v for k, v in sorted(label_map.values.items())}, "ignore": sorted(int(v) for v in label_map.ignore)}


def metric_cache_key(
    *,
    label_path: str | Path,
    prediction_path: str | Path,
    reference_map: LabelMap,
    prediction_map: LabelMap,
    settings: EvaluationSettings,
    annotated: Collection[str] | None = None,
) -> str:
    """SHA-256 of the inputs that determine a case's metric rows (file contents, label maps, settings, annotated structures).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.label_maps import get_label_map
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a").write_bytes(b"x"); (d / "b").write_bytes(b"y")
    1
    1
    >>> m = get_label_map("spine_audit")
    >>> s = EvaluationSettings(structures=("spinal_cord",), metrics=("dice",))
    >>> k = metric_cache_key(label_path=d / "a", prediction_path=d / "b", reference_map=m, prediction_map=m, settings=s)
    >>> k == metric_cache_key(label_path=d / "b", prediction_path=d / "a", reference_map=m, prediction_map=m, settings=s)
    False
    """
    doc = {
        "version": METRIC_CACHE_VERSION,
        "reference": _file_sha256(label_path),
        "prediction": _file_sha256(prediction_path),
        "reference_map": _label_map_doc(reference_map),
        "prediction_map": _label_map_doc(prediction_map),
        "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)),
        "annotated": None if annotated is None else sorted(annotated),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.json"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _load(path: Path, case_id: str) -> pd.DataFrame | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        table = pd.DataFrame(doc["data"], columns=doc["columns"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("metric cache entry %s unreadable (%s); recomputing", path, exc)
        return None
    for column, dtype in doc.get("dtypes", {}).items():
        if column in table and dtype.startswith("float"):
            table[column] = table[column].astype("float64")
    return table.assign(case_id=case_id)


def evaluate_case_cached(case_id: str, *, cache_dir: str | Path, **kwargs: Any) -> pd.DataFrame | CaseFailure:
    """:func:`audit.evaluate.evaluate_case` through the cache in ``cache_dir`` (same arguments and result).

    A hashing error (unreadable file) is left to :func:`~audit.evaluate.evaluate_case`, which records it as
    the case's failure.
    """
    cache_dir = Path(cache_dir)
    try:
        key = metric_cache_key(
            label_path=kwargs["label_path"],
            prediction_path=kwargs["prediction_path"],
            reference_map=kwargs["reference_map"],
            prediction_map=kwargs["prediction_map"],
            settings=kwargs["settings"],
            annotated=kwargs.get("annotated"),
        )
    except OSError:
        return evaluate_case(case_id, **kwargs)
    path = _entry(cache_dir, key)
    cached = _load(path, case_id)
    if cached is not None:
        return cached
    result = evaluate_case(case_id, **kwargs)
    if isinstance(result, pd.DataFrame):
        doc = {
            "columns": list(result.columns),
            "dtypes": {c: str(t) for c, t in result.dtypes.items()},
            "data": [[_plain(v) for v in row] for row in result.itertuples(index=False, name=None)],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, allow_nan=True))
    return result
