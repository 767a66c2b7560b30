"""The packaged demo model through the whole inference path on fresh synthetic cases (not its training data)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from audit.inference import BUILTIN_MODELS, InferenceCase, InferenceResult, load_model, model_spec_from_dict, run_inference


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_demo_model_segments_unseen_in_distribution_cases(tmp_path):
    if not BUILTIN_MODELS["demo-unet"].is_file():
        pytest.skip("demo model not trained yet (python -m audit.models.train_demo)")
    from audit.synthetic import iter_training_cases

    cases = []
    for i, c in enumerate(iter_training_cases(3, seed=987)):  # one case per training site, a seed never trained on
        ip, lp = tmp_path / f"img{i}.nii.gz", tmp_path / f"lab{i}.nii.gz"
        nib.save(nib.Nifti1Image(c.image, c.affine), ip)
        nib.save(nib.Nifti1Image(c.label, c.affine), lp)
        cases.append(InferenceCase(f"{c.site}/{i}", ip, lp, site=c.site))
    model = load_model(model_spec_from_dict({"kind": "checkpoint", "path": "builtin:demo-unet"}, base_dir=tmp_path), device="cpu")
    results = list(run_inference(model, cases, cache_dir=tmp_path / "cache", workers=2))
    card = json.loads(BUILTIN_MODELS["demo-unet"].read_text())
    for case, res in zip(cases, results):
        assert isinstance(res, InferenceResult)
        pred, ref = nib.load(res.prediction_path), nib.load(case.label_path)
        assert pred.shape == ref.shape and np.array_equal(pred.affine, ref.affine)
        p, r = np.asarray(pred.dataobj), np.asarray(ref.dataobj)
        # the card reports mean Dice ~0.9 body; a single unseen case must be well above chance
        assert dice(p == 1, r == 1) > 0.8, (case.case_id, dice(p == 1, r == 1), card["validation"])
        assert dice(p == 4, r == 4) > 0.8
