"""Label values to the canonical ontology, reporting unknown values instead of zeroing them silently.

Thin wrappers over :func:`audit.ontology.remap_labels`: they resolve a site's ``label_map`` setting
(a known name or an inline mapping), count the values seen, and turn unknown values into an error that
names the values, their voxel counts and the label map, ready for :class:`audit.records.CaseFailure`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from audit.label_maps import LABEL_MAPS, get_label_map, label_map_from_dict
from audit.ontology import LabelMap, remap_labels, value_counts
from audit.records import CaseFailure

logger = logging.getLogger(__name__)

__all__ = [
    "UnknownLabelValuesError",
    "resolve_label_map",
    "label_value_counts",
    "remap_to_ontology",
    "unknown_labels_error",
    "remap_case_labels",
]


class UnknownLabelValuesError(ValueError):
    """A label file holds values that its label map neither maps nor ignores."""


def resolve_label_map(spec: str | Mapping[Any, Any] | LabelMap, *, name: str = "custom") -> LabelMap:
    """Return a :class:`~audit.ontology.LabelMap` from a config value.

    Parameters
    ----------
    spec : str, Mapping or LabelMap
        A name in :data:`audit.label_maps.LABEL_MAPS` (``"cspineseg"``), a mapping ``{1: vertebral_body, ...}``,
        or ``{"values": {...}, "ignore": [...]}``.
    name : str
        Name given to an inline map (the manifest's ``label_map`` column holds it).

    Raises
    ------
    KeyError
        For an unknown map name (the message lists the known ones).
    ValueError
        For an inline map with bad keys or structure names.
    """
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, str):
        return get_label_map(spec)
    if isinstance(spec, Mapping):
        if "values" in spec:
            extra = set(spec) - {"values", "ignore", "name"}
            if extra:
                raise ValueError(f"label_map: allowed keys are ['values', 'ignore', 'name']; got {sorted(extra)}")
            return label_map_from_dict(str(spec.get("name", name)), spec["values"], tuple(spec.get("ignore", ())))
        return label_map_from_dict(name, spec)
    raise ValueError(f"label_map: expected a name in {sorted(LABEL_MAPS)} or a mapping of label values; got {spec!r}")


def label_value_counts(label_array: np.ndarray) -> dict[int, int]:
    """Voxel count of every value present (background included), as plain ints."""
    arr = np.asarray(label_array)
    if arr.dtype.kind == "f":
        arr = np.rint(arr).astype(np.int64)
    values, counts = value_counts(arr)
    return {int(v): int(c) for v, c in zip(values, counts)}


def unknown_labels_error(unknown_values: tuple[int, ...], label_map: LabelMap, *, unknown_voxels: int | None = None) -> UnknownLabelValuesError:
    """The error for unknown label values, naming them, the voxel count and the map's known values."""
    voxels = "" if unknown_voxels is None else f" ({unknown_voxels} voxels)"
    known = sorted(label_map.values)
    ignored = sorted(label_map.ignore)
    return UnknownLabelValuesError(
        f"label values {list(unknown_values)}{voxels} are not in label map {label_map.name!r} "
        f"(mapped: {known}; ignored: {ignored}); add them to the site's label_map or its ignore list"
    )


def remap_to_ontology(
    label_array: np.ndarray,
    label_map: str | Mapping[Any, Any] | LabelMap,
    *,
    granularity: str = "coarse",
    strict: bool = False,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Remap a label array to canonical values and return it with the unknown values found.

    Parameters
    ----------
    label_array : numpy.ndarray
        Integer label array in the site's convention.
    label_map : str, Mapping or LabelMap
        The site's convention (see :func:`resolve_label_map`).
    granularity : {"coarse", "level"}
        Passed to :func:`audit.ontology.remap_labels`.
    strict : bool
        When True, raise :class:`UnknownLabelValuesError` if unknown values are present.

    Returns
    -------
    array : numpy.ndarray
        Canonical labels; unknown values are background here and must be reported.
    unknown_values : tuple of int
        Values the map neither maps nor ignores.
    """
    lmap = resolve_label_map(label_map)
    result = remap_labels(label_array, lmap, granularity=granularity)
    if result.unknown_values and strict:
        raise unknown_labels_error(result.unknown_values, lmap, unknown_voxels=result.unknown_voxels)
    return result.array, result.unknown_values


def remap_case_labels(
    case_id: str,
    label_array: np.ndarray,
    label_map: str | Mapping[Any, Any] | LabelMap,
    *,
    site: str,
    stage: str = "harmonize",
    granularity: str = "coarse",
) -> np.ndarray | CaseFailure:
    """Remap one case's labels; return the canonical array, or a :class:`CaseFailure` for unknown values.

    Bad arrays (negative values, non-integer floats) also become a failure instead of raising.
    """
    try:
        array, _ = remap_to_ontology(label_array, label_map, granularity=granularity, strict=True)
    except (UnknownLabelValuesError, ValueError) as exc:
        return CaseFailure.from_exception(case_id, stage, exc, site=site)
    return array
