"""PreciseBN: recompute BatchNorm running statistics as the true average over ``num_iter`` training batches.

As detectron2's hook does at the end of training (TEST.PRECISE_BN), with one change users asked for: the
statistics are averaged across processes afterwards, so every rank ends with the same values (detectron2's
differed per rank when the norms were not synchronised).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

from . import comm


def bn_layers(model: Any) -> list[Any]:
    """The BatchNorm-family layers (BN, SyncBN, naiveSyncBN) in training use; FrozenBN and GN are excluded."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def update_bn_stats(model: Any, batches: Iterable[Any], num_iter: int) -> int:
    """Run ``num_iter`` batches forward in training mode (no gradients, weights untouched) and set each BN's
    running mean/var to the average of the per-batch statistics; returns the number of batches used."""
    import torch

    layers = bn_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in layers]
    means = [torch.zeros_like(bn.running_mean) for bn in layers]
    variances = [torch.zeros_like(bn.running_var) for bn in layers]
    counts = [bn.num_batches_tracked.clone() for bn in layers]
    for bn in layers:
        bn.momentum = 1.0  # running stats then hold exactly the last batch's statistics
    model.train()
    used = 0
    with torch.no_grad():
        for used, inputs in enumerate(itertools.islice(batches, num_iter), start=1):
            model(inputs)
            for bn, mean, var in zip(layers, means, variances):
                mean += (bn.running_mean - mean) / used
                var += (bn.running_var - var) / used
    comm.all_reduce_mean(means + variances)
    for bn, momentum, mean, var, count in zip(layers, momenta, means, variances, counts):
        bn.momentum = momentum
        if used:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        bn.num_batches_tracked.copy_(count)
    model.train(was_training)
    return used
