"""``verse``: a VerSe release folder (rawdata / derivatives, BIDS-like) as one site.

Layout of VerSe 2019/2020 (github.com/anjany/verse README and ``utils/data_utilities.py``)::

    <root>/rawdata/<subject>/<stem>_ct.nii.gz                      CT in HU
    <root>/derivatives/<subject>/<stem>_seg-vert_msk.nii.gz        vertebra mask (VerSe labels, label map ``verse``)
    <root>/derivatives/<subject>/<stem>_seg-subreg_ctd.json        centroids (VerSe 2019: ``_seg-vb_ctd.json``)

``<stem>`` is ``sub-verse004`` or ``sub-gl003_dir-ax``; ``<subject>`` (``sub-gl003``) is the patient id, so
two scans of one subject are clustered. The centroid file's path goes into the manifest column
``centroids_path`` and is read by :func:`load_verse_centroids` for the per-vertebra evaluation. Optional JSON
sidecars ``<stem>_ct.json`` supply CT metadata; ``ct_defaults`` sets values for the whole site.

Options: ``ct_defaults`` ({}), ``require_centroids`` (false: a missing centroid file is allowed and centroids come
from the mask; true: it is a per-case failure).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from audit.records import CaseFailure
from audit.sites.base import Adapter, RawCase, SiteDataError, missing_file_failure, register_adapter
from audit.sites.config import SiteConfig
from audit.sites.ct import ct_extra_from_raw, read_sidecar

logger = logging.getLogger(__name__)

__all__ = ["iter_verse", "load_verse_centroids", "CENTROID_SUFFIXES"]

CENTROID_SUFFIXES: tuple[str, ...] = ("_seg-subreg_ctd.json", "_seg-vb_ctd.json")
_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def iter_verse(config: SiteConfig) -> Iterator[RawCase | CaseFailure]:
    """Yield the cases of a VerSe release (see the module docstring)."""
    raw_dir, deriv = config.root / "rawdata", config.root / "derivatives"
    if not raw_dir.is_dir():
        raise SiteDataError(f"sites[{config.name}].root: no rawdata/ folder in {config.root}")
    defaults = config.option("ct_defaults") or {}
    require = bool(config.option("require_centroids", False))
    for image in sorted(raw_dir.glob("*/*_ct.nii.gz")):
        subject, stem = image.parent.name, image.name[: -len("_ct.nii.gz")]
        case_id = f"{config.name}/{stem}"
        label = deriv / subject / f"{stem}_seg-vert_msk.nii.gz"
        centroids = next((deriv / subject / f"{stem}{s}" for s in CENTROID_SUFFIXES if (deriv / subject / f"{stem}{s}").is_file()), None)
        if centroids is None and require and label.is_file():
            yield CaseFailure(case_id, "adapter", f"no centroid file {stem}{CENTROID_SUFFIXES[0]} in {deriv / subject}", "MissingCentroids", config.name)
            continue
        try:
            general, ct_raw = read_sidecar(image.with_name(f"{stem}_ct.json"))
        except ValueError as exc:
            yield CaseFailure.from_exception(case_id, "adapter", exc, site=config.name)
            continue
        extra = {"centroids_path": str(centroids) if centroids else "", **ct_extra_from_raw(ct_raw, defaults)}
        case = RawCase(stem, image, label, patient_id=subject, metadata=general, extra=extra)
        yield case if label.is_file() else case.failed(missing_file_failure(case_id, config.name, "label", label))


def load_verse_centroids(path: str | Path, shape: tuple[int, int, int], axcodes: tuple[str, str, str], spacing: tuple[float, ...]) -> dict[int, np.ndarray]:
    """Read a VerSe ``*_ctd.json`` into ``{label: centroid in mm}`` on the mask's array axes (index x spacing).

    The file's first entry is ``{"direction": [a, b, c]}``: X, Y, Z are voxel coordinates along axes pointing to
    ``a``, ``b``, ``c`` (e.g. P, I, R). As in VerSe's ``reorient_centroids_to``, an axis pointing the other way in
    the mask gives ``size - coordinate``. Entries with NaN coordinates are skipped (as VerSe's ``load_centroids``).

    Raises
    ------
    ValueError
        If the file is not a VerSe centroid list, or its direction does not span three axes.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "direction" not in data[0]:
        raise ValueError(f"centroids {Path(path).name}: expected a VerSe list starting with {{'direction': [...]}}")
    direction = [str(c).upper() for c in data[0]["direction"]]
    if len(direction) != 3 or sorted(_AXES[c] for c in direction if c in _AXES) != [0, 1, 2]:
        raise ValueError(f"centroids {Path(path).name}: direction must name three axes such as ['P', 'I', 'R']; found {direction}")
    codes = [str(c).upper() for c in axcodes]
    out: dict[int, np.ndarray] = {}
    for entry in data[1:]:
        try:
            label = int(entry["label"])
            xyz = [float(entry[k]) for k in ("X", "Y", "Z")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"centroids {Path(path).name}: bad entry {entry!r}") from exc
        if any(np.isnan(xyz)):
            continue
        index = np.zeros(3)
        for c, value in zip(direction, xyz):
            axis = next(i for i, m in enumerate(codes) if _AXES[m] == _AXES[c])
            index[axis] = value if codes[axis] == c else shape[axis] - value
        out[label] = index * np.asarray(spacing, dtype=np.float64)
    return out


register_adapter(
    Adapter(
        name="verse",
        iter_cases=iter_verse,
        options=frozenset({"ct_defaults", "require_centroids"}),
        default_label_map="verse",
        description="VerSe release: rawdata/<sub>/<stem>_ct.nii.gz, derivatives/<sub>/<stem>_seg-vert_msk.nii.gz and _ctd.json",
    )
)
