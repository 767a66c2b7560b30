"""Builders for inference tests: tiny models of every kind and tiny cases written to disk."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from audit.inference import InferenceCase
from audit.synthetic import cohort_case_files

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


def trusted_program(path: Path) -> dict:
    """The protocol fields that opt in to a TorchScript file: ``options.allow_code`` and the pinned ``sha256``."""
    from audit.harmonize.geometry import file_sha256

    return {"options": {"allow_code": True}, "sha256": file_sha256(path)}


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


NNUNET_LABELS = {"background": 0, "vertebral_body": 1, "intervertebral_disc": 2}


def nnunet_plans(*, reader: str = "SimpleITKIO", spacing=(2.4, 1.2, 1.0), patch=(16, 16, 16)) -> dict:
    """``plans.json`` of a tiny 3d_fullres nnU-Net v2 model, in the format nnU-Net's ExperimentPlanner writes.

    ``spacing`` and ``patch`` are in nnU-Net's axis order (the nibabel axes reversed). The architecture is
    the PlainConvUNet nnU-Net plans by default, shrunk to 3 stages of 4-16 features.
    """
    resample = "resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset901_TinySpine",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [12, 16, 20],
        "image_reader_writer": reader,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": [12, 16, 20],
                "spacing": list(spacing),
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": resample,
                "resampling_fn_seg": resample,
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": resample,
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": 3,
                        "features_per_stage": [4, 8, 16],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3,
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [2, 2, 2],
                        "n_conv_per_stage_decoder": [2, 2],
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": True,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1000.0, "mean": 500.0, "median": 500.0, "min": 0.0, "percentile_00_5": 10.0, "percentile_99_5": 990.0, "std": 200.0}
        },
    }


def write_nnunet_model(folder: Path, *, reader: str = "SimpleITKIO", folds=(0,), seed: int = 0, labels=None, checkpoint_extra=None, spacing=(2.4, 1.2, 1.0)) -> Path:
    """A real nnU-Net v2 trained-model folder with seeded random PlainConvUNet weights.

    The checkpoint has the keys nnU-Net's trainer saves (network weights, optimizer state, the training log
    with numpy floats, init_args, trainer name, mirroring axes). The network is built by nnunetv2's own
    ``get_network_from_plans`` so that the weights fit what the predictor will build.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    labels = dict(NNUNET_LABELS if labels is None else labels)
    plans = nnunet_plans(reader=reader, spacing=spacing)
    dataset = {"channel_names": {"0": "T2"}, "labels": labels, "numTraining": 4, "file_ending": ".nii.gz"}
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, len(labels), deep_supervision=False)
        checkpoint = {
            "network_weights": net.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99, "nesterov": True, "params": [0, 1]}]},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [np.float64(0.5), np.float64(0.55)], "epoch_end_timestamps": [1.0, 2.0]},
            "_best_ema": np.float64(0.55),
            "current_epoch": 2,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            **(checkpoint_extra or {}),
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def cohort_cases(cohort: Path) -> list[InferenceCase]:
    """The cases of a generated synthetic cohort as inference cases."""
    return [InferenceCase(case_id, image, label, site=site) for case_id, image, label, site in cohort_case_files(cohort)]
