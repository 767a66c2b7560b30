"""``probabilities_to_labels`` on the CPU (NumPy arg-max) equals ``torch.argmax`` label for label.

Oracle: ``torch.argmax(probs, dim=0)``, the implementation it replaced; cases with exact ties (first channel
wins) and NaN probabilities (a NaN counts as the maximum) included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.inference.predict import probabilities_to_labels


def softmax_volume(n_classes: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Softmax of seeded normal logits: a (C, X, Y, Z) probability volume like the network's."""
    logits = torch.from_numpy(np.random.default_rng(seed).normal(scale=3.0, size=(n_classes, *shape)).astype(np.float32))
    return torch.softmax(logits, dim=0)


def with_ties_and_nans(probs: torch.Tensor) -> torch.Tensor:
    """Copies channel 0 into channel 2 on one slab (exact ties) and puts NaN in two channels of another slab."""
    out = probs.clone()
    out[2, 0] = out[0, 0]
    out[1, 1, :, ::2] = float("nan")
    out[3, 1, ::3] = float("nan")
    return out


@pytest.mark.parametrize(
    "probs",
    [softmax_volume(5, (4, 6, 7), 0), softmax_volume(2, (3, 3, 3), 1), with_ties_and_nans(softmax_volume(5, (4, 6, 7), 2)),
     softmax_volume(300, (2, 2, 3), 3)],
    ids=["five-classes", "binary", "ties-and-nan", "uint16-classes"],
)
def test_cpu_labels_equal_torch_argmax(probs):
    expected = torch.argmax(probs, dim=0).numpy()
    labels = probabilities_to_labels(probs)
    assert labels.dtype == (np.uint8 if probs.shape[0] <= 256 else np.uint16)
    np.testing.assert_array_equal(labels, expected)
