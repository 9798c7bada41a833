"""PreciseBN: recompute BatchNorm running statistics as population statistics over ``num_iter`` training batches.

As detectron2's hook does at the end of training (TEST.PRECISE_BN), with fvcore's estimator (fvcore 0.1.5,
which detectron2 0.6 requires): all the batches are treated as one population. Each layer's batch means and
(bias-corrected back) variances are weighted by that layer's element count per channel in the batch, and the
variance is ``E[x^2] - E[x]^2`` over all of them, so the spread of the batch means between batches counts too.
(Averaging the per-batch variances instead, fvcore's older rule, leaves that spread out and under-estimates
the variance: with two images per batch it changed box / mask AP on the shapes protocol by many points.)

One addition: the statistics are averaged across processes afterwards, so every rank ends with the same values
(detectron2's differed per rank when the norms were not synchronised); and a layer that no batch reached
keeps its statistics (fvcore would set them to zero).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

from ..utils import comm


def bn_layers(model: Any) -> list[Any]:
    """The BatchNorm-family layers (BN, SyncBN, naiveSyncBN) in training use; FrozenBN and GN are excluded."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


class PopulationStats:
    """Running population mean and mean square of one layer's inputs, batch by batch (fvcore's estimator)."""

    def __init__(self, like: Any) -> None:
        import torch

        self.mean = torch.zeros_like(like)
        self.square_mean = torch.zeros_like(like)
        self.count = 0

    def update(self, batch_mean: Any, batch_var: Any, batch_size: int) -> None:
        """Add one batch: its mean, its unbiased variance (BatchNorm's running_var at momentum 1) and its
        element count per channel."""
        self.count += batch_size
        square_mean = batch_mean.square() + batch_var * ((batch_size - 1) / batch_size)
        weight = batch_size / self.count
        self.mean += (batch_mean - self.mean) * weight
        self.square_mean += (square_mean - self.square_mean) * weight


def update_bn_stats(model: Any, batches: Iterable[Any], num_iter: int) -> int:
    """Run ``num_iter`` batches forward in training mode (no gradients, weights untouched) and set each BN's
    running mean/var to the population statistics of those batches; returns the number of batches used."""
    import torch

    layers = bn_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in layers]
    stats = [PopulationStats(bn.running_mean) for bn in layers]
    sizes: dict[int, int] = {}

    def recorder(index: int) -> Any:
        def record(module: Any, inputs: tuple[Any, ...]) -> None:
            sizes[index] = inputs[0].numel() // inputs[0].shape[1]
        return record

    hooks = [bn.register_forward_pre_hook(recorder(i)) for i, bn in enumerate(layers)]
    for bn in layers:
        bn.momentum = 1.0  # running stats then hold exactly the last batch's statistics
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for inputs in itertools.islice(batches, num_iter):
                used += 1
                sizes.clear()
                model(inputs)
                for index, (bn, layer_stats) in enumerate(zip(layers, stats)):
                    if index in sizes:  # a layer this forward did not reach adds nothing
                        layer_stats.update(bn.running_mean, bn.running_var, sizes[index])
    finally:
        for hook in hooks:
            hook.remove()
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.train(was_training)
    comm.all_reduce_mean([s.mean for s in stats] + [s.square_mean for s in stats])
    for bn, layer_stats in zip(layers, stats):
        if layer_stats.count:
            bn.running_mean.copy_(layer_stats.mean)
            bn.running_var.copy_(layer_stats.square_mean - layer_stats.mean.square())
    return used
