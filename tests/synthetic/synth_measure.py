"""Measurement helpers for the synthetic-cohort tests.

Measurements go through nibabel's own canonical reorientation (``as_closest_canonical``) and plain
numpy on labels and images, independently of the generator's internals.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from audit.synthetic import SyntheticCase


def canonical(case: SyntheticCase, array: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """``array`` of ``case`` reoriented to RAS by nibabel, with its voxel sizes."""
    img = nib.as_closest_canonical(nib.Nifti1Image(array, case.affine))
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms())


def disc_height_from_labels(case: SyntheticCase) -> float:
    """Mean disc height (mm): disc voxels in the S-I column through each disc's centroid, mid-sagittal slice."""
    levels, zooms = canonical(case, case.level_label)
    mid = levels[levels.shape[0] // 2]
    heights = []
    for value in range(102, 109):  # C2-C3 .. C7-T1 (LEVEL_VALUES)
        mask = mid == value
        if mask.sum() < 5:
            continue
        column = int(round(np.nonzero(mask)[0].mean()))
        heights.append(mask[column].sum() * zooms[2])
    return float(np.mean(heights))


def disc_to_csf_ratio(case: SyntheticCase) -> float:
    """Median disc intensity over median CSF (canal) intensity, central three slices."""
    image, _ = canonical(case, case.image)
    labels, _ = canonical(case, case.label)
    c = image.shape[0] // 2
    img, lab = image[c - 1 : c + 2].astype(float), labels[c - 1 : c + 2]
    return float(np.median(img[lab == 2]) / np.median(img[lab == 3]))


def cord_snr(case: SyntheticCase, offset: float) -> float:
    """Median cord signal over the noise sigma estimated in air (Rayleigh: sigma = sqrt(E[M^2] / 2))."""
    from scipy.ndimage import binary_erosion

    air = binary_erosion(case.tissue == 0, structure=np.ones((3, 3, 3)), iterations=1)
    values = case.image[air].astype(float) - offset
    sigma = np.sqrt(np.mean(values**2) / 2.0)
    cord = np.median(case.image[case.label == 4].astype(float) - offset)
    return float(cord / sigma)
