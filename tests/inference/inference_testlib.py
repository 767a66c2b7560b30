"""Builders for inference tests: tiny models of every kind and tiny cases written to disk."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from audit.inference import InferenceCase

REAL_CASES = {
    # name: (image, reference label) relative to ../shared/data; orientations PIR, PSR, LPS
    "tptbox-PIR": ("tptbox-cervical-mri/sub-mri_label-6_T2w.nii.gz", "tptbox-cervical-mri/sub-mri_seg-subreg_label-6_msk.nii.gz"),
    "sct-PSR": ("sct-cervical/t2/t2.nii.gz", "sct-cervical/t2/t2_seg-manual.nii.gz"),
    "totalseg-LPS": ("totalseg-mr/example_mr_sm.nii.gz", "totalseg-mr/example_seg_mr.nii.gz"),
}

UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}


class ThresholdNet(torch.nn.Module):
    """Pointwise model: label 1 where the (prepared) intensity exceeds ``threshold``, else 0.

    Because it is pointwise, its prediction on the native grid is known without running it:
    ``native_image > threshold``, whatever reorientation happened in between.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -float(threshold)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def save_torchscript(module: torch.nn.Module, path: Path, example_shape=(1, 1, 8, 8, 8)) -> Path:
    """Trace and save ``module`` (TorchScript is deprecated in torch >= 2.10 but still a format users ship)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning and the TorchScript deprecation are expected here
        traced = torch.jit.trace(module.eval(), torch.zeros(example_shape))
        traced.save(str(path))
    return path


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    """A 2-level MONAI UNet with seeded random weights."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(**UNET_ARGS).eval()


def write_bundle(folder: Path, net: torch.nn.Module) -> Path:
    """A minimal MONAI bundle: configs/inference.json (network_def), configs/metadata.json, models/model.pt."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "UNet", **UNET_ARGS}}))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "tiny"}))
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def blob_case(folder: Path, name: str, *, axcodes: str = "PIR", shape=(20, 16, 12), spacing=(1.0, 1.2, 3.0), seed: int = 0) -> InferenceCase:
    """A smooth random image with a label file on the same grid, stored in orientation ``axcodes``."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    img = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    img = (1000 * (img - img.min()) / (np.ptp(img) + 1e-9)).astype(np.int16)
    lab = (img > np.median(img)).astype(np.uint8)
    # build an affine whose axis codes are ``axcodes``: column i points along the world axis of code i
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for i, c in enumerate(axcodes):
        ax, sign = axes[c]
        affine[ax, i] = sign * spacing[i]
    affine[:3, 3] = [-10.0, 20.0, -30.0]
    folder.mkdir(parents=True, exist_ok=True)
    ip, lp = folder / f"{name}_img.nii.gz", folder / f"{name}_lab.nii.gz"
    nib.save(nib.Nifti1Image(img, affine), ip)
    nib.save(nib.Nifti1Image(lab, affine), lp)
    return InferenceCase(case_id=f"site-X/{name}", image_path=ip, label_path=lp, site="site-X")
