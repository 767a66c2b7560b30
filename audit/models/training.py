"""The training loop shared by the packaged demo models (``train_demo`` for MRI, ``train_ct_demo`` for CT).

One home for the optimizer, schedule and loss of both: AdamW (weight decay 1e-4), a one-cycle learning-rate
schedule (15% warm-up) and MONAI's Dice + cross-entropy loss on one-hot labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["fit_segmentation"]

#: Draws one training sample: (image, label) arrays of one fixed patch shape.
DrawSample = Callable[[], tuple[np.ndarray, np.ndarray]]


def fit_segmentation(network: torch.nn.Module, draw: DrawSample, *, steps: int, batch_size: int, lr: float, log_every: int = 50) -> list[float]:
    """Train ``network`` in place for ``steps`` batches of ``batch_size`` samples from ``draw``; return the losses.

    Parameters
    ----------
    network : torch.nn.Module
        A segmentation network with one input channel and one output channel per class (background included).
    draw : callable
        Returns one (image, label) sample; labels are integer class indices.
    steps, batch_size : int
        Optimizer steps and samples per step.
    lr : float
        Peak learning rate of the one-cycle schedule.
    log_every : int
        Log the loss every this many steps (and at the last).

    Returns
    -------
    list of float
        The training loss of every step.

    Examples
    --------
    >>> from monai.networks.nets import UNet
    >>> _ = torch.manual_seed(0)
    >>> net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    >>> image = np.zeros((8, 8, 8), np.float32); image[2:6, 2:6, 2:6] = 1.0
    >>> losses = fit_segmentation(net, lambda: (image, (image > 0).astype(np.int64)), steps=40, batch_size=2, lr=1e-2)
    >>> len(losses), losses[-1] < losses[0]
    (40, True)
    """
    from monai.losses import DiceCELoss

    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        batch = [draw() for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None].astype(np.int64))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if step % log_every == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.0f s)", step + 1, steps, losses[-1], time.perf_counter() - t0)
    return losses
