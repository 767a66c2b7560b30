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
from collections.abc import Iterable, Mapping
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
    "coarse_of",
    "is_annotated",
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


def is_annotated(name: str, annotated: Iterable[str]) -> bool:
    """True when a reference that annotates the structures ``annotated`` can score structure ``name``.

    A structure is annotated when it is listed, and a coarse structure also when one of its levels is listed
    (a per-level vertebra mask annotates ``vertebra``). A level is never implied by its coarse class: a
    whole-spine ``vertebra`` mask says nothing about ``C5``.

    Examples
    --------
    >>> is_annotated("intervertebral_disc", ["C5", "C5-C6"]), is_annotated("C5", ["vertebra"])
    (True, False)
    """
    target = structure(name)
    listed = set(annotated)
    return name in listed or (not target.level and any(structure(a).coarse == name for a in listed))


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
        What the values mean, in words.
    source : str
        Where the convention is documented (repository file, paper), so every value can be checked.
    """

    name: str
    values: Mapping[int, str]
    ignore: frozenset[int] = frozenset()
    description: str = ""
    source: str = ""

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


def remap_labels(array: np.ndarray, source: LabelMap, *, granularity: str = "coarse") -> RemapResult:
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
    present = np.unique(arr)
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
    out = lut[arr]
    return RemapResult(out.astype(np.uint8) if granularity == "coarse" else out, unknown, unknown_voxels)


def _coarse_map(
    name: str, pairs: Mapping[int, str], ignore: frozenset[int] = frozenset(), description: str = "", source: str = ""
) -> LabelMap:
    return LabelMap(name=name, values=MappingProxyType(dict(pairs)), ignore=ignore, description=description, source=source)


# ---- Built-in label maps. Every value is cited from its source; tests/core/test_label_maps_real.py checks each map
# ---- on a real file from ../shared/data where one exists (a perfect prediction scores Dice 1 for every structure).

#: TPTBox ``TPTBox/core/vert_constants.py`` (github.com/Hendrik-code/TPTBox), ``Vertebra_Instance``: C1-C7 = 1-7,
#: T1-T12 = 8-19, L1-L6 = 20-25, S1 = 26, COCC = 27, T13 = 28, S2-S6 = 29-33; the disc below vertebra ``v`` is
#: ``v + 100`` (VERTEBRA_INSTANCE_IVD_LABEL_OFFSET), its endplate ``v + 200``, its rib ``v + 32`` (C6 to L1, T13: 53).
#: VerSe (Sekuboyina et al. 2021, Table 1) uses the same 1-28 vertebra numbering.
_TPTBOX_T13, _TPTBOX_COCCYX, _TPTBOX_S2_S6 = 28, 27, frozenset(range(29, 34))
_VERTEBRA_INSTANCES = {i + 1: v for i, v in enumerate(VERTEBRAE[:-1])} | {26: "S1"}
_TPTBOX_DISCS = {100 + _vertebra_code(d.split("-")[0]): d for d in DISCS} | {
    100 + _vertebra_code("L6"): "intervertebral_disc",  # L6-S1 (lumbosacral transitional): no level in the ontology
    100 + _TPTBOX_T13: "intervertebral_disc",  # T13-L1: no level in the ontology
}
_TPTBOX_ENDPLATES = frozenset(200 + v for v in range(1, 34))
_TPTBOX_RIBS = frozenset(range(6 + 32, 20 + 32 + 1)) | {21 + 32}

#: TPTBox ``Location`` (same file): 41 Arcus_Vertebrae, 42 Spinosus_Process, 43/44 Costal_Process_Left/Right,
#: 45/46 Superior_Articular_Left/Right, 47/48 Inferior_Articular_Left/Right, **49 Vertebra_Corpus_border,
#: 50 Vertebra_Corpus** (the vertebral body is 49 and 50 together), 60 Spinal_Cord, 61 Spinal_Canal, 62 Endplate,
#: 63/64 Rib_Left/Right, 100 Vertebra_Disc. Endplates (62) are neither body nor disc here, as in the CSpineSeg-style
#: derivation of ../shared/data/SOURCES.md (body = 49|50, disc = 100).
_TPTBOX_POSTERIOR = frozenset(range(41, 49))

#: TotalSegmentator ``totalsegmentator/map_to_binary.py`` (github.com/wasserth/TotalSegmentator, commit 0275d30),
#: ``class_map``. ``total_mr`` (v2, 50 classes): 18 sacrum, 19 vertebrae, 20 intervertebral_discs, 21 spinal_cord,
#: the rest organs, vessels, muscles and bones. ``total`` (v2 CT, 117 classes): 25 sacrum, 26 vertebrae_S1,
#: 27-50 vertebrae_L5 .. vertebrae_C1, 79 spinal_cord. ``total_v1`` (v1 CT, 104 classes): 18-41 vertebrae_L5 ..
#: vertebrae_C1, 92 sacrum, no spinal cord. The v1 and v2 CT numberings differ: name the version.
_TOTALSEG_SOURCE = "github.com/wasserth/TotalSegmentator totalsegmentator/map_to_binary.py (commit 0275d30), class_map"
_TOTALSEG_MR = {19: "vertebra", 20: "intervertebral_disc", 21: "spinal_cord"}
_CERVICAL_TO_LUMBAR_UP = tuple(reversed(VERTEBRAE[: VERTEBRAE.index("L5") + 1]))
_TOTALSEG_CT_V2 = {26: "S1", 79: "spinal_cord"} | {27 + i: v for i, v in enumerate(v for v in _CERVICAL_TO_LUMBAR_UP if v != "L6")}
_TOTALSEG_CT_V1 = {18 + i: v for i, v in enumerate(v for v in _CERVICAL_TO_LUMBAR_UP if v != "L6")}


def _others(n_classes: int, mapped: Mapping[int, str]) -> frozenset[int]:
    return frozenset(set(range(1, n_classes + 1)) - set(mapped))


_TPTBOX = "github.com/Hendrik-code/TPTBox TPTBox/core/vert_constants.py"
LABEL_MAPS: Mapping[str, LabelMap] = MappingProxyType(
    {
        "spine_audit": _coarse_map(
            "spine_audit",
            {v: n for n, v in COARSE_VALUES.items()},
            description="spine-audit canonical coarse labels (also the demo model's output)",
            source="audit.ontology.COARSE_VALUES",
        ),
        "spine_audit_levels": _coarse_map(
            "spine_audit_levels",
            {v: n for n, v in LEVEL_VALUES.items()} | {COARSE_VALUES["spinal_canal"] + 200: "spinal_canal", COARSE_VALUES["spinal_cord"] + 200: "spinal_cord"},
            description="spine-audit canonical level labels; canal 203, cord 204",
            source="audit.ontology.LEVEL_VALUES",
        ),
        "cspineseg": _coarse_map(
            "cspineseg",
            {1: "vertebral_body", 2: "intervertebral_disc"},
            description="CSpineSeg (Duke): 0 background, 1 vertebral body, 2 intervertebral disc",
            source="CSpineSeg data descriptor (MIDRC); ../shared/data/SOURCES.md",
        ),
        "totalseg_mr": _coarse_map(
            "totalseg_mr",
            _TOTALSEG_MR,
            ignore=_others(50, _TOTALSEG_MR),
            description="TotalSegmentator v2 total_mr: 19 vertebrae, 20 intervertebral discs, 21 spinal cord; the other 1-50 (18 sacrum, organs) ignored",
            source=f"{_TOTALSEG_SOURCE}['total_mr']",
        ),
        "totalseg_ct_v2": _coarse_map(
            "totalseg_ct_v2",
            _TOTALSEG_CT_V2,
            ignore=_others(117, _TOTALSEG_CT_V2),
            description="TotalSegmentator v2 total (CT): 26 S1, 27-50 L5..C1, 79 spinal cord; the other 1-117 (25 sacrum, organs, ribs) ignored",
            source=f"{_TOTALSEG_SOURCE}['total']",
        ),
        "totalseg_ct_v1": _coarse_map(
            "totalseg_ct_v1",
            _TOTALSEG_CT_V1,
            ignore=_others(104, _TOTALSEG_CT_V1),
            description="TotalSegmentator v1 total (CT): 18-41 L5..C1; the other 1-104 (92 sacrum, organs, ribs) ignored; no spinal cord",
            source=f"{_TOTALSEG_SOURCE}['total_v1']",
        ),
        "tptbox_subregion": _coarse_map(
            "tptbox_subregion",
            {49: "vertebral_body", 50: "vertebral_body", 100: "intervertebral_disc", 60: "spinal_cord", 61: "spinal_canal"},
            ignore=_TPTBOX_POSTERIOR | {62, 63, 64},
            description="TPTBox/SPINEPS subregions: 49 vertebral body border + 50 vertebral body interior = vertebral body, 100 disc, "
            "60 cord, 61 canal; 41-48 posterior elements, 62 endplate, 63/64 ribs ignored",
            source=f"{_TPTBOX} Location",
        ),
        "tptbox_vert": _coarse_map(
            "tptbox_vert",
            _VERTEBRA_INSTANCES | {_TPTBOX_T13: "vertebra"} | _TPTBOX_DISCS,
            ignore=_TPTBOX_ENDPLATES | _TPTBOX_RIBS | _TPTBOX_S2_S6 | {_TPTBOX_COCCYX},
            description="TPTBox vertebra instances: 1-25 C1..L6, 26 S1, 28 T13 (a vertebra without a level), 100+k disc below "
            "vertebra k; 200+k endplates, 38-53 ribs, 27 coccyx, 29-33 S2-S6 ignored",
            source=f"{_TPTBOX} Vertebra_Instance",
        ),
        "verse": _coarse_map(
            "verse",
            _VERTEBRA_INSTANCES | {_TPTBOX_T13: "vertebra"},
            ignore=frozenset({_TPTBOX_COCCYX}),
            description="VerSe: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum (as S1), 28 T13 (a vertebra without a level); 27 coccyx ignored",
            source="Sekuboyina et al., VerSe, Medical Image Analysis 2021; same numbering as TPTBox Vertebra_Instance",
        ),
        "sct_levels": _coarse_map(
            "sct_levels",
            {i: "spinal_cord" for i in range(1, 27)},
            description="Spinal Cord Toolbox cord labelled by vertebral level (value = level, 1 = C1); all values are spinal cord",
            source="spinalcordtoolbox.org sct_label_vertebrae (labelled segmentation); ../shared/data/SOURCES.md",
        ),
        "sct_cord": _coarse_map(
            "sct_cord",
            {1: "spinal_cord"},
            description="Spinal Cord Toolbox binary cord mask (*_seg-manual): 1 spinal cord",
            source="spinalcordtoolbox.org sct_deepseg_sc output / sct_testing_data t2_seg-manual; ../shared/data/SOURCES.md",
        ),
    }
)


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
