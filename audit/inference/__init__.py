"""Inference engine: any model (TorchScript, checkpoint + MONAI network, MONAI bundle, nnU-Net, precomputed
predictions), on GPU or CPU, cached and resumable.

Typical use::

    spec = model_spec_from_dict(protocol.model, base_dir=protocol.base_dir)
    model = load_model(spec, device="auto")
    for result in run_inference(model, cases, cache_dir=run_dir / "predictions", workers=2):
        ...  # InferenceResult (prediction_path on the reference grid) or audit.records.CaseFailure
"""

from audit.inference.cache import cache_key, cache_path
from audit.inference.loaders import LoadedModel, build_network, folder_sha256, load_model
from audit.inference.nnunet import NNUNET_INSTALL_HINT, nnunet_available, validate_nnunet_folder
from audit.inference.predict import (
    autocast_context,
    predict_labels_with_retry,
    predict_probabilities,
    prepare_image,
    prepare_label,
    select_device,
)
from audit.inference.runner import InferenceCase, InferenceResult, predict_case, run_inference
from audit.inference.trust import MONAI_NETWORKS, UntrustedModelError, vet_model
from audit.inference.spec import (
    BUILTIN_MODELS,
    MODEL_KINDS,
    InferenceSettings,
    ModelSpec,
    NetworkSpec,
    PreprocessingSpec,
    load_model_card,
    model_spec_from_dict,
)

__all__ = [
    "BUILTIN_MODELS",
    "MONAI_NETWORKS",
    "UntrustedModelError",
    "vet_model",
    "MODEL_KINDS",
    "NNUNET_INSTALL_HINT",
    "InferenceCase",
    "InferenceResult",
    "InferenceSettings",
    "LoadedModel",
    "ModelSpec",
    "NetworkSpec",
    "PreprocessingSpec",
    "autocast_context",
    "build_network",
    "cache_key",
    "cache_path",
    "folder_sha256",
    "load_model",
    "load_model_card",
    "model_spec_from_dict",
    "nnunet_available",
    "predict_case",
    "predict_labels_with_retry",
    "predict_probabilities",
    "prepare_image",
    "prepare_label",
    "run_inference",
    "select_device",
    "validate_nnunet_folder",
]
