"""The built-in label maps: what each value of a known convention's label file means, with its source.

Every value is cited from its source; ``tests/core/test_label_maps_real.py`` checks each map on a real file from
../shared/data where one exists (a perfect prediction scores Dice 1 for every structure). The structures, the
:class:`~audit.ontology.LabelMap` type and remapping live in :mod:`audit.ontology`.

Examples
--------
>>> get_label_map("tptbox_subregion").values[49], get_label_map("tptbox_subregion").values[50]
('vertebral_body', 'vertebral_body')
>>> VERSE_CODES["L6"], VERSE_CODES["T13"]
(25, 28)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from audit.ontology import COARSE_VALUES, DISCS, LEVEL_VALUES, VERTEBRAE, LabelMap

__all__ = [
    "LABEL_MAPS",
    "get_label_map",
    "label_map_from_dict",
    "VERSE_VERTEBRA_LABELS",
    "VERTEBRA_SEQUENCE",
    "VERSE_CODES",
    "VERTEBRA_VARIANT_VALUES",
]


def _coarse_map(
    name: str, pairs: Mapping[int, str], ignore: frozenset[int] = frozenset(), description: str = "", source: str = ""
) -> LabelMap:
    return LabelMap(name=name, values=MappingProxyType(dict(pairs)), ignore=ignore, description=description, source=source)



#: TPTBox ``TPTBox/core/vert_constants.py`` (github.com/Hendrik-code/TPTBox), ``Vertebra_Instance``: C1-C7 = 1-7,
#: T1-T12 = 8-19, L1-L6 = 20-25, S1 = 26, COCC = 27, T13 = 28, S2-S6 = 29-33; the disc below vertebra ``v`` is
#: ``v + 100`` (VERTEBRA_INSTANCE_IVD_LABEL_OFFSET), its endplate ``v + 200``, its rib ``v + 32`` (C6 to L1, T13: 53).
#: VerSe (Sekuboyina et al. 2021, Table 1) uses the same 1-28 vertebra numbering.
_TPTBOX_T13, _TPTBOX_COCCYX, _TPTBOX_S2_S6 = 28, 27, frozenset(range(29, 34))
_VERTEBRA_INSTANCES = {i + 1: v for i, v in enumerate(VERTEBRAE[:-1])} | {26: "S1"}
_TPTBOX_DISCS = {100 + LEVEL_VALUES[d.split("-")[0]]: d for d in DISCS} | {
    100 + LEVEL_VALUES["L6"]: "intervertebral_disc",  # L6-S1 (lumbosacral transitional): no level in the ontology
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


# ---- CT vertebra conventions (issue #15: CTSpine1K, VerSe, TotalSegmentator CT) -------------------------------
# Sources, read 2026-12-03:
# * VerSe: github.com/anjany/verse utils/data_utilities.py (commit 4d6365fd) ``v_dict``: 1-7 C1-C7, 8-19 T1-T12,
#   20-25 L1-L6, 26 Sacrum, 27 Cocc, 28 T13; centroid json ``*_ctd.json`` with labels in the same numbering.
# * CTSpine1K: github.com/MIRACLE-Center/CTSpine1K ReadMe.md (commit 7e0d212f): images ``<id>.nii.gz``, masks
#   ``<id>_seg.nii.gz``, evaluated labels ``1 .. 25``; Task056_VerSe2019.py writes ``labels = {i: str(i) for i in
#   range(26)}``. The repository does not name the levels: their meaning (VerSe numbering, 25 = L6) is inferred from
#   the VerSe pipeline the dataset was annotated with, and is stated as an inference in docs/ct.md.
# * TotalSegmentator CT outputs: the maps ``totalseg_ct_v1`` and ``totalseg_ct_v2`` above (same source, checked against
#   map_to_binary.py commit 0275d304 for this issue too).

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
VERTEBRA_VARIANT_VALUES: Mapping[str, Mapping[int, str]] = MappingProxyType(
    {"verse": MappingProxyType({28: "T13"}), "tptbox_vert": MappingProxyType({28: "T13"})}
)

_CT_LABEL_MAPS = {
    "ctspine1k": _coarse_map(
        "ctspine1k",
        {i + 1: v for i, v in enumerate(VERTEBRAE[:25])},
        description="CTSpine1K <id>_seg.nii.gz: 1-25 = C1..L6 in VerSe numbering (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6)",
        source="github.com/MIRACLE-Center/CTSpine1K ReadMe.md and Task056_VerSe2019.py (labels 1-25); level names inferred "
        "from the VerSe numbering (docs/ct.md)",
    ),
}
LABEL_MAPS = MappingProxyType({**LABEL_MAPS, **_CT_LABEL_MAPS})
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
