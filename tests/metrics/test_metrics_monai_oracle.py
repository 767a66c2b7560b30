"""Agreement with MONAI (the independent oracle) on synthetic and real masks, anisotropic spacing."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testlib import DATA, monai_oracle, random_blob
from scipy import ndimage

from audit.metrics import compute_case_metrics, load_labels

# MONAI 1.6 calls its own deprecated argument (get_mask_edges always_return_as_numpy) internally.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")

ORACLE_METRICS = ("dice", "hd", "hd95", "assd", "nsd_1mm", "nsd_2mm")
# MONAI returns float32; distances up to ~60 mm -> float32 rounding below 1e-5 mm.
ATOL = 1e-5


def ours(ref: np.ndarray, pred: np.ndarray, spacing) -> dict[str, float]:
    table = compute_case_metrics(
        ref.astype(np.uint8), pred.astype(np.uint8), spacing=spacing, structures={"s": (1,)}, metrics=ORACLE_METRICS
    )
    assert set(table["status"]) == {"ok"}
    return dict(zip(table["metric"], table["value"]))


def assert_matches_monai(ref: np.ndarray, pred: np.ndarray, spacing) -> None:
    expected = monai_oracle(ref, pred, spacing)
    got = ours(ref, pred, spacing)
    for name in ORACLE_METRICS:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize(
    ("seed", "spacing"),
    [(0, (0.5, 0.5, 4.0)), (1, (0.5, 0.5, 4.0)), (2, (4.0, 0.5, 0.5)), (3, (1.2, 0.7, 3.3)), (4, (1.0, 1.0, 1.0))],
    ids=["sag-mri-a", "sag-mri-b", "slice-axis-first", "irregular", "isotropic"],
)
def test_random_blobs_match_monai(seed, spacing):
    ref = random_blob((48, 40, 14), seed)
    pred = random_blob((48, 40, 14), seed + 1000)
    assert_matches_monai(ref, pred, spacing)


def test_small_displaced_blob_matches_monai():
    ref = random_blob((40, 40, 16), 7, threshold=0.85)
    pred = np.roll(ref, (2, -1, 1), axis=(0, 1, 2))
    assert_matches_monai(ref, pred, (0.6, 0.6, 3.5))


def test_masks_touching_the_image_border_match_monai():
    ref = np.zeros((20, 18, 10), dtype=bool)
    ref[0:8, 3:18, 0:6] = True  # touches three faces of the image
    pred = np.zeros_like(ref)
    pred[0:10, 0:15, 2:10] = True
    assert_matches_monai(ref, pred, (0.5, 0.8, 3.0))


def test_2d_masks_match_monai():
    ref = random_blob((60, 50), 11)
    pred = random_blob((60, 50), 12)
    assert_matches_monai(ref, pred, (0.4, 1.3))


def _require(path):
    if not path.exists():
        pytest.skip(f"real data not available: {path} (see ../shared/data/SOURCES.md)")
    return path


def test_tptbox_vertebral_body_vs_shifted_copy_matches_monai():
    labels, _ = load_labels(_require(DATA / "tptbox-cervical-mri" / "sub-mri_seg-subreg_label-6_msk.nii.gz"))
    body = labels == 49
    shifted = np.roll(body, 1, axis=1)
    # The real grid is 1.5 mm isotropic; score it as if anisotropic to exercise spacing handling.
    assert_matches_monai(body, shifted, (1.5, 0.75, 3.0))


def test_sct_cord_vs_dilated_copy_matches_monai():
    cord, spacing = load_labels(_require(DATA / "sct-cervical" / "t2" / "t2_seg-manual.nii.gz"))
    ref = cord == 1
    pred = ndimage.binary_dilation(ref, iterations=2)
    assert_matches_monai(ref, pred, spacing)
    assert_matches_monai(ref, pred, (0.8, 1.0, 2.5))
