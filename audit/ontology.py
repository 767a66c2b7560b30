"""The canonical spine ontology and label maps from known conventions.

Two granularities:

* **coarse** structures, one per tissue class: ``vertebral_body``, ``intervertebral_disc``,
  ``spinal_canal`` (the canal *excluding* the cord, i.e. CSF space), ``spinal_cord``, and ``vertebra``
  (a whole vertebra with posterior elements, as labelled by TotalSegmentator or VerSe; kept apart from
  ``vertebral_body`` on purpose so that a body-only model is never scored against whole-vertebra labels);
* **level** structures: vertebrae ``C1`` .. ``S1`` and discs ``C2-C3`` .. ``L5-S1``.

Canonical label values (what harmonized arrays contain):

* coarse: 0 background, 1 vertebral_body, 2 intervertebral_disc, 3 spinal_canal, 4 spinal_cord, 5 vertebra;
* level: vertebra ``k``-th in :data:`VERTEBRAE` is ``k + 1`` (C1 = 1 .. L5 = 24, L6 = 25, S1 = 26, as VerSe),
  the disc below vertebra ``v`` is ``100 + code(v)`` (C5-C6 = 105, as TPTBox).

A :class:`LabelMap` says what each value of a site's or model's label file means. Values listed in
``ignore`` are known non-spine labels (organs in TotalSegmentator, endplates) dropped on purpose; any
other value not in the map is *unknown* and reported by :func:`remap_labels`, never silently zeroed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "COARSE_STRUCTURES",
    "COARSE_VALUES",
    "VERTEBRAE",
    "DISCS",
    "LEVEL_VALUES",
    "Structure",
    "LabelMap",
    "RemapResult",
    "LABEL_MAPS",
    "structure",
    "get_label_map",
    "label_map_from_dict",
    "remap_labels",
    "present_values",
    "value_counts",
    "coarse_of",
]

COARSE_STRUCTURES: tuple[str, ...] = (
    "vertebral_body",
    "intervertebral_disc",
    "spinal_canal",
    "spinal_cord",
    "vertebra",
)
COARSE_VALUES: Mapping[str, int] = MappingProxyType({name: i + 1 for i, name in enumerate(COARSE_STRUCTURES)})

VERTEBRAE: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 7)),
    "S1",
)
#: Discs between consecutive vertebrae from C2 down to S1 (no disc between C1 and C2; L6 is a variant).
_STANDARD = tuple(v for v in VERTEBRAE if v != "L6")
DISCS: tuple[str, ...] = tuple(f"{a}-{b}" for a, b in zip(_STANDARD[1:-1], _STANDARD[2:]))


def _vertebra_code(name: str) -> int:
    return VERTEBRAE.index(name) + 1


LEVEL_VALUES: Mapping[str, int] = MappingProxyType(
    {**{v: _vertebra_code(v) for v in VERTEBRAE}, **{d: 100 + _vertebra_code(d.split("-")[0]) for d in DISCS}}
)


@dataclasses.dataclass(frozen=True)
class Structure:
    """A named anatomical structure of the ontology.

    Parameters
    ----------
    name : str
        Canonical name (``"vertebral_body"``, ``"C5"``, ``"C5-C6"``).
    coarse : str
        The coarse class it belongs to (itself for coarse structures).
    level : bool
        True for per-level structures.
    """

    name: str
    coarse: str
    level: bool


def _all_structures() -> dict[str, Structure]:
    out = {n: Structure(n, n, False) for n in COARSE_STRUCTURES}
    out.update({v: Structure(v, "vertebra", True) for v in VERTEBRAE})
    out.update({d: Structure(d, "intervertebral_disc", True) for d in DISCS})
    return out


_STRUCTURES = _all_structures()


def structure(name: str) -> Structure:
    """Look up a structure by canonical name.

    Raises
    ------
    KeyError
        If ``name`` is not in the ontology; the message lists the allowed names.
    """
    try:
        return _STRUCTURES[name]
    except KeyError:
        raise KeyError(f"structure: unknown name {name!r}; allowed: {sorted(_STRUCTURES)}") from None


def coarse_of(name: str) -> str:
    """Return the coarse class of a structure (``"C5-C6"`` -> ``"intervertebral_disc"``)."""
    return structure(name).coarse


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """What the integer values of a label file mean.

    Parameters
    ----------
    name : str
        Convention name (``"cspineseg"``).
    values : Mapping[int, str]
        Label value to canonical structure name. Several values may map to one structure.
    ignore : frozenset[int]
        Known values that are deliberately not spine structures (dropped to background).
    description : str
        Where the convention comes from.
    """

    name: str
    values: Mapping[int, str]
    ignore: frozenset[int] = frozenset()
    description: str = ""

    def __post_init__(self) -> None:
        for value, name in self.values.items():
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"label map {self.name!r}: label values must be positive integers; found {value!r}")
            structure(name)  # raises for an unknown structure name
        overlap = set(self.values) & set(self.ignore)
        if overlap:
            raise ValueError(f"label map {self.name!r}: values {sorted(overlap)} are both mapped and ignored")

    @property
    def structures(self) -> tuple[str, ...]:
        """Structures this map can express, in ontology order."""
        present = set(self.values.values())
        return tuple(n for n in _STRUCTURES if n in present)

    def values_of(self, name: str) -> tuple[int, ...]:
        """Label values that encode structure ``name`` (directly or, for a coarse name, through its levels)."""
        structure(name)
        return tuple(
            sorted(v for v, s in self.values.items() if s == name or (_STRUCTURES[s].coarse == name and _STRUCTURES[s].level))
        )


@dataclasses.dataclass(frozen=True)
class RemapResult:
    """Output of :func:`remap_labels`.

    Attributes
    ----------
    array : numpy.ndarray
        Canonical label array (uint8 for coarse, uint16 for level).
    unknown_values : tuple[int, ...]
        Values found that the source map neither maps nor ignores. They were set to background
        in ``array`` and must be reported.
    unknown_voxels : int
        Number of voxels carrying an unknown value.
    """

    array: np.ndarray
    unknown_values: tuple[int, ...]
    unknown_voxels: int


def present_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (``numpy.unique``), by counting for 8/16-bit unsigned arrays.

    Counting is about 5 times faster than ``numpy.unique`` on a 512 x 512 x 300 CT mask, and ``ravel(order="K")``
    reads a NIfTI (Fortran-ordered) array without copying it.
    """
    return value_counts(array)[0]


def value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.unique(array, return_counts=True)``, by chunked counting for 8/16-bit unsigned (and bool) arrays."""
    arr = np.asarray(array)
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2 and arr.size:
        flat = arr.ravel(order="K")
        flat = flat.view(np.uint8) if arr.dtype == np.bool_ else flat
        counts = np.zeros(1 << (8 * arr.dtype.itemsize), dtype=np.int64)
        for start in range(0, flat.size, 1 << 22):  # chunks: bincount converts its input to intp
            chunk = np.bincount(flat[start : start + (1 << 22)])
            counts[: chunk.size] += chunk
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(arr, return_counts=True)


def remap_labels(array: np.ndarray, source: LabelMap, *, granularity: str = "coarse", present: np.ndarray | None = None) -> RemapResult:
    """Translate a label array from ``source`` values to canonical values.

    Parameters
    ----------
    array : numpy.ndarray
        Integer label array (float arrays holding integers, as some files do, are accepted).
    source : LabelMap
        What the values in ``array`` mean.
    granularity : {"coarse", "level"}
        ``"coarse"`` maps every structure onto its coarse class value (:data:`COARSE_VALUES`);
        ``"level"`` keeps levels (:data:`LEVEL_VALUES`) and maps coarse-only structures to their coarse value.
    present : numpy.ndarray, optional
        The distinct values of ``array`` when the caller already has them (:func:`present_values`).

    Returns
    -------
    RemapResult
        The canonical array and any unknown values found.
    """
    if granularity not in ("coarse", "level"):
        raise ValueError(f"remap_labels: granularity must be 'coarse' or 'level'; got {granularity!r}")
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"remap_labels: label array of dtype {arr.dtype} holds non-integer values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"remap_labels: label array must be integer; got dtype {arr.dtype}")
    present = present_values(arr) if present is None else np.asarray(present)
    max_value = int(present.max()) if present.size else 0
    if present.size and int(present.min()) < 0:
        raise ValueError(f"remap_labels: negative label values found: {present[present < 0].tolist()}")
    lut = np.zeros(max_value + 1, dtype=np.uint16)
    for value, name in source.values.items():
        if value <= max_value:
            s = _STRUCTURES[name]
            if granularity == "coarse" or not s.level:
                lut[value] = COARSE_VALUES[s.coarse if s.level else name]
            else:
                lut[value] = LEVEL_VALUES[name]
    known = set(source.values) | set(source.ignore) | {0}
    unknown = tuple(int(v) for v in present if int(v) not in known)
    unknown_voxels = int(np.isin(arr, unknown).sum()) if unknown else 0
    if unknown:
        logger.debug("label map %s: unknown values %s (%d voxels)", source.name, unknown, unknown_voxels)
    out = (lut.astype(np.uint8) if granularity == "coarse" else lut)[arr]  # coarse values fit uint8: no second copy
    return RemapResult(out, unknown, unknown_voxels)


def _coarse_map(name: str, pairs: Mapping[int, str], ignore: frozenset[int] = frozenset(), description: str = "") -> LabelMap:
    return LabelMap(name=name, values=MappingProxyType(dict(pairs)), ignore=ignore, description=description)


_TOTALSEG_MR_OTHER = frozenset(set(range(1, 51)) - {19, 20, 21})
_VERSE = {i + 1: v for i, v in enumerate(VERTEBRAE[:-1])} | {26: "S1"}

LABEL_MAPS: Mapping[str, LabelMap] = MappingProxyType(
    {
        "spine_audit": _coarse_map(
            "spine_audit",
            {v: n for n, v in COARSE_VALUES.items()},
            description="spine-audit canonical coarse labels (also the demo model's output)",
        ),
        "spine_audit_levels": _coarse_map(
            "spine_audit_levels",
            {v: n for n, v in LEVEL_VALUES.items()} | {COARSE_VALUES["spinal_canal"] + 200: "spinal_canal", COARSE_VALUES["spinal_cord"] + 200: "spinal_cord"},
            description="spine-audit canonical level labels; canal 203, cord 204",
        ),
        "cspineseg": _coarse_map(
            "cspineseg",
            {1: "vertebral_body", 2: "intervertebral_disc"},
            description="CSpineSeg (Duke): 0 background, 1 vertebral body, 2 intervertebral disc",
        ),
        "totalseg_mr": _coarse_map(
            "totalseg_mr",
            {19: "vertebra", 20: "intervertebral_disc", 21: "spinal_cord"},
            ignore=_TOTALSEG_MR_OTHER,
            description="TotalSegmentator total_mr: 19 vertebrae, 20 intervertebral discs, 21 spinal cord; 1-50 others are organs",
        ),
        "tptbox_subregion": _coarse_map(
            "tptbox_subregion",
            {49: "vertebral_body", 100: "intervertebral_disc", 60: "spinal_cord", 61: "spinal_canal"},
            ignore=frozenset({41, 42, 43, 44, 45, 46, 47, 48, 50, 62, 63}),
            description="TPTBox subregions: 49 vertebral body, 100 disc, 60 cord, 61 canal; 41-48 posterior elements, 62 endplate ignored",
        ),
        "tptbox_vert": _coarse_map(
            "tptbox_vert",
            {**{i + 1: v for i, v in enumerate(VERTEBRAE[:-1])}, 26: "S1"}
            | {100 + _vertebra_code(d.split("-")[0]): d for d in DISCS},
            ignore=frozenset(200 + i for i in range(1, 27)),
            description="TPTBox vertebra instances: 1-25 vertebrae (VerSe order), 100+k disc below vertebra k, 200+k endplates ignored",
        ),
        "verse": _coarse_map(
            "verse",
            _VERSE | {28: "vertebra"},
            ignore=frozenset({27}),
            description="VerSe: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx (ignored), 28 T13 (a vertebra without a "
            "canonical level; per-vertebra evaluation names it T13, see VERSE_VERTEBRA_LABELS)",
        ),
        "sct_levels": _coarse_map(
            "sct_levels",
            {i: "spinal_cord" for i in range(1, 27)},
            description="Spinal Cord Toolbox cord labelled by vertebral level (value = level); all values are spinal cord",
        ),
    }
)


# ---- CT vertebra conventions (issue #15: CTSpine1K, VerSe, TotalSegmentator CT) -------------------------------
# Kept in one block so that edits to the maps above merge cleanly. Sources, read 2026-12-03:
# * VerSe: github.com/anjany/verse utils/data_utilities.py (commit 4d6365fd) ``v_dict``: 1-7 C1-C7, 8-19 T1-T12,
#   20-25 L1-L6, 26 Sacrum, 27 Cocc, 28 T13; centroid json ``*_ctd.json`` with labels in the same numbering.
# * CTSpine1K: github.com/MIRACLE-Center/CTSpine1K ReadMe.md (commit 7e0d212f): images ``<id>.nii.gz``, masks
#   ``<id>_seg.nii.gz``, evaluated labels ``1 .. 25``; Task056_VerSe2019.py writes ``labels = {i: str(i) for i in
#   range(26)}``. The repository does not name the levels: their meaning (VerSe numbering, 25 = L6) is inferred from
#   the VerSe pipeline the dataset was annotated with, and is stated as an inference in docs/ct.md.
# * TotalSegmentator: github.com/wasserth/TotalSegmentator totalsegmentator/map_to_binary.py (commit 0275d304)
#   ``class_map["total_v1"]``: 18 vertebrae_L5 .. 41 vertebrae_C1, 92 sacrum (104 classes); ``class_map["total"]``
#   (v2): 25 sacrum, 26 vertebrae_S1, 27 vertebrae_L5 .. 50 vertebrae_C1 (117 classes).

#: VerSe vertebra labels, variants included (25 = L6, 28 = T13). 26 (sacrum) and 27 (coccyx) are not vertebrae.
VERSE_VERTEBRA_LABELS: Mapping[int, str] = MappingProxyType(
    {**{i + 1: v for i, v in enumerate(VERTEBRAE[:-1])}, 28: "T13"}
)
#: Craniocaudal order of vertebrae with the variants in place: an "off-by-one" labelling error is a label one step
#: away in this sequence (T12 <-> T13 <-> L1, L5 <-> L6).
VERTEBRA_SEQUENCE: tuple[str, ...] = (*VERTEBRAE[:19], "T13", *VERTEBRAE[19:25])
#: VerSe code of each vertebra name (the inverse of :data:`VERSE_VERTEBRA_LABELS`).
VERSE_CODES: Mapping[str, int] = MappingProxyType({v: k for k, v in VERSE_VERTEBRA_LABELS.items()})
#: Values that a known convention uses for a vertebra the canonical levels cannot hold (T13).
VERTEBRA_VARIANT_VALUES: Mapping[str, Mapping[int, str]] = MappingProxyType({"verse": MappingProxyType({28: "T13"})})

_TOTALSEG_V1_VERTEBRAE = {18 + i: v for i, v in enumerate(reversed(VERTEBRAE[:24]))}  # 18 L5 .. 41 C1
_TOTALSEG_V2_VERTEBRAE = {26: "S1"} | {27 + i: v for i, v in enumerate(reversed(VERTEBRAE[:24]))}  # 26 S1, 27 L5 .. 50 C1

_CT_LABEL_MAPS = {
    "ctspine1k": _coarse_map(
        "ctspine1k",
        {i + 1: v for i, v in enumerate(VERTEBRAE[:25])},
        description="CTSpine1K <id>_seg.nii.gz: 1-25 = C1..L6 in VerSe numbering (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6)",
    ),
    "totalseg_v1": _coarse_map(
        "totalseg_v1",
        _TOTALSEG_V1_VERTEBRAE,
        ignore=frozenset(set(range(1, 105)) - set(_TOTALSEG_V1_VERTEBRAE)),
        description="TotalSegmentator v1 'total' (104 classes): 18 L5 .. 41 C1; 92 sacrum and organs ignored",
    ),
    "totalseg_v2": _coarse_map(
        "totalseg_v2",
        _TOTALSEG_V2_VERTEBRAE,
        ignore=frozenset(set(range(1, 118)) - set(_TOTALSEG_V2_VERTEBRAE)),
        description="TotalSegmentator v2 'total' (117 classes): 26 S1, 27 L5 .. 50 C1; 25 sacrum and organs ignored",
    ),
}
LABEL_MAPS = MappingProxyType({**LABEL_MAPS, **_CT_LABEL_MAPS})
__all__ += ["VERSE_VERTEBRA_LABELS", "VERTEBRA_SEQUENCE", "VERSE_CODES", "VERTEBRA_VARIANT_VALUES"]
# ---- end of CT vertebra conventions ----------------------------------------------------------------------------

def get_label_map(name: str) -> LabelMap:
    """Return a known label map by name.

    Raises
    ------
    KeyError
        If ``name`` is unknown; the message lists the known maps.
    """
    try:
        return LABEL_MAPS[name]
    except KeyError:
        raise KeyError(f"label_map: unknown convention {name!r}; known: {sorted(LABEL_MAPS)}") from None


def label_map_from_dict(name: str, values: Mapping[int | str, str], ignore: tuple[int, ...] = ()) -> LabelMap:
    """Build a label map from a protocol or site config (keys may be strings of integers)."""
    parsed: dict[int, str] = {}
    for key, struct in values.items():
        try:
            parsed[int(key)] = str(struct)
        except (TypeError, ValueError):
            raise ValueError(f"label map {name!r}: keys must be integer label values; got {key!r}") from None
    return LabelMap(name=name, values=MappingProxyType(parsed), ignore=frozenset(int(v) for v in ignore))
