"""Gallery of the worst cases per group: the mid-sagittal slice with reference (solid) and prediction (dashed) contours."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from audit.report.figures import OKABE_ITO, plt, to_data_uri

logger = logging.getLogger(__name__)

__all__ = ["worst_cases", "case_figure"]


def worst_cases(cases: pd.DataFrame, *, axis: str, metric: str, higher_is_better: bool, per_group: int) -> pd.DataFrame:
    """The ``per_group`` worst cases of each group, ranked by the case's mean ``metric`` over structures."""
    sub = cases[(cases["metric"] == metric) & cases["status"].isin(["ok", "missed", "false_positive"]) & np.isfinite(cases["value"])]
    per_case = sub.groupby(["case_id", axis], as_index=False)["value"].mean()
    per_case = per_case.sort_values("value", ascending=higher_is_better, kind="stable")
    return per_case.groupby(axis, sort=True).head(per_group).sort_values([axis, "value"], ascending=[True, higher_is_better])


def _resolve(path: str, run_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else run_dir / p


def _mid_sagittal(img: nib.Nifti1Image, labels: bool) -> np.ndarray:
    """The middle left-right slice in RAS orientation, superior up."""
    canonical = nib.as_closest_canonical(img)
    data = np.asanyarray(canonical.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    sl = data[data.shape[0] // 2]
    return np.rot90(sl if labels else sl.astype(np.float32))


def case_figure(row: pd.Series, *, run_dir: Path, label_values: dict[str, int], title: str) -> str | None:
    """Data URI of one case's mid-sagittal slice with contours; None when its files cannot be read."""
    try:
        image = _mid_sagittal(nib.load(str(_resolve(row["image_path"], run_dir))), labels=False)
        ref_img = nib.load(str(_resolve(row["label_path"], run_dir)))
        reference = _mid_sagittal(ref_img, labels=True)
        prediction = _mid_sagittal(nib.load(str(_resolve(row["prediction_path"], run_dir))), labels=True)
        zooms = nib.as_closest_canonical(ref_img).header.get_zooms()[:3]
    except Exception as exc:  # a missing or unreadable file must not stop the report
        logger.warning("gallery: case %s not drawn: %s", row.get("case_id"), exc)
        return None
    fig, ax = plt.subplots(figsize=(2.6, 2.9))
    aspect = float(zooms[2] / zooms[1]) if zooms[1] else 1.0
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
    for i, value in enumerate(label_values.values()):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        for mask, style in ((reference, "solid"), (prediction, "dashed")):
            m = np.isin(mask, [value]).astype(float)
            if m.any() and m.shape[0] > 1 and m.shape[1] > 1:
                ax.contour(m, levels=[0.5], colors=[colour], linestyles=style, linewidths=0.9)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()
    return to_data_uri(fig)
