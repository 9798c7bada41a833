"""Training and test data loaders over dataset records, sharded by rank like detectron2's samplers.

Training: an endless stream of image indices, reshuffled every pass by ``(seed, pass)``, cut into *global*
batches of SOLVER.IMS_PER_BATCH positions (consecutive ones; with DATALOADER.ASPECT_RATIO_GROUPING, the first
positions of one orientation, as they fill up). Process ``rank`` takes items ``rank, rank + world_size, ...``
of each global batch (disjoint, deterministic shards, as detectron2's ``TrainingSampler``). The augmentation
of stream position ``k`` draws from its own generator seeded with ``(seed, k)``. So the global batch of
iteration ``i``, images and augmentation, is the same whatever the number of processes or NUM_WORKERS, and
resuming at iteration ``i`` skips ``i`` global batches on indices alone, without reading an image. (detectron2
groups orientations within each process instead, so its batches depend on the process count.) Test: each rank
takes one contiguous slice of the images in id order (detectron2's ``InferenceSampler``), batch size 1.
"""
from __future__ import annotations

import functools
import itertools
import os
from typing import Any, Callable, Iterator, Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..errors import ConfigError, ZooError
from .catalog import DatasetSpec
from .coco import load_records
from .mapper import DatasetMapper


def build_train_loader(cfg: Any, dataset_spec: DatasetSpec, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                       num_workers: Optional[int] = None, start_iter: int = 0) -> Iterator[list[dict]]:
    """An endless iterator of batches (lists of mapped dicts), SOLVER.IMS_PER_BATCH // world_size per batch.

    ``start_iter`` (resuming) skips the first ``start_iter`` global batches, so the run goes on exactly where an
    uninterrupted one would be.
    """
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if total % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the {world_size} processes")
    records = load_records(dataset_spec, filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))
    landscape = [r["width"] > r["height"] for r in records] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    stream = _TrainStream(records, DatasetMapper(cfg, is_train=True), seed, rank, world_size, total, landscape,
                          skip=start_iter)
    loader = DataLoader(stream, batch_size=None, collate_fn=_identity,
                        num_workers=_workers(cfg, num_workers), persistent_workers=False)
    return _batches(_raising(iter(loader)), total // world_size)


def build_test_loader(cfg: Any, dataset_spec: DatasetSpec, *, rank: int = 0, world_size: int = 1,
                      max_images: Optional[int] = None, num_workers: Optional[int] = None) -> "_TestLoader":
    """Batches of one mapped dict (with ``image_id``), images in id order; this rank's contiguous slice only.

    ``max_images`` keeps the first N images (in id order) before sharding.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    records = load_records(dataset_spec)
    if max_images is not None:
        records = records[:max(0, int(max_images))]
    begin, end = shard_bounds(len(records), rank, world_size)
    dataset = _MappedList(records[begin:end], DatasetMapper(cfg, is_train=False))
    return _TestLoader(DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_identity,
                                  num_workers=_workers(cfg, num_workers)))


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[begin, end) of rank's contiguous share of ``total`` items; the first ``total % world_size`` get one more."""
    base, extra = divmod(total, world_size)
    begin = rank * base + min(rank, extra)
    return begin, begin + base + (1 if rank < extra else 0)


def _identity(batch: Any) -> Any:
    return batch


def _workers(cfg: Any, num_workers: Optional[int]) -> int:
    """DATALOADER.NUM_WORKERS (or ``num_workers``), at most the CPUs this process may use (torch's own limit)."""
    wanted = int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(wanted, cpus))


class _Failure:
    """A user-facing error raised while mapping, carried out of a loader worker as data so that the main process
    raises it as it was (one line), not as torch's re-raised worker traceback."""

    def __init__(self, error: ZooError) -> None:
        self.error = error


def _guarded(call: Callable[[], dict]) -> "dict | _Failure":
    try:
        return call()
    except ZooError as exc:
        return _Failure(exc)


def _raising(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, raising the error of the first :class:`_Failure` (a batch of the test loader is a list)."""
    for item in items:
        for part in item if isinstance(item, list) else [item]:
            if isinstance(part, _Failure):
                raise part.error
        yield item


class _TestLoader:
    """The test DataLoader (its length, its batches) with mapping errors raised as in the main process."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[dict]]:
        return _raising(iter(self.loader))


class _MappedList(Dataset):
    def __init__(self, records: list[dict], mapper: DatasetMapper) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> "dict | _Failure":
        return _guarded(functools.partial(self.mapper, self.records[index]))


class _TrainStream(IterableDataset):
    """This rank's share of the endless shuffled stream, mapped; each worker takes every Nth item of it."""

    def __init__(self, records: list[dict], mapper: DatasetMapper, seed: int, rank: int, world_size: int,
                 global_batch: int, landscape: Optional[list[bool]], skip: int = 0) -> None:
        self.records, self.mapper = records, mapper
        self.seed, self.rank, self.world_size, self.skip = int(seed), rank, world_size, skip
        self.global_batch, self.landscape = global_batch, landscape

    def global_batches(self) -> Iterator[list[tuple[int, int]]]:
        """(stream position, record index) of each global batch, endlessly; one orientation per batch when
        grouping by aspect ratio."""
        def order() -> Iterator[int]:
            for epoch in itertools.count():
                yield from np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self.records)).tolist()

        buckets: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        for position, index in enumerate(order()):
            key = self.landscape[index] if self.landscape is not None else True
            buckets[key].append((position, index))
            if len(buckets[key]) == self.global_batch:
                yield buckets[key]
                buckets[key] = []

    def positions(self) -> Iterator[tuple[int, int]]:
        """(stream position, record index) pairs of this rank, endlessly, after the first ``skip`` global batches."""
        for batch in itertools.islice(self.global_batches(), self.skip, None):
            yield from batch[self.rank::self.world_size]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.positions()
        if info is not None:  # DataLoader collects from its workers round-robin, so order is kept
            mine = itertools.islice(mine, info.id, None, info.num_workers)
        for position, index in mine:
            item = _guarded(functools.partial(self.mapper, self.records[index],
                                              np.random.default_rng([self.seed, _AUGMENT, position])))
            yield item  # type: ignore[misc]  # a _Failure is raised by the main process
            if isinstance(item, _Failure):
                return


_ORDER, _AUGMENT = 0, 1  # what a generator is for: the order of one pass, or the augmentation of one position


def _batches(items: Iterator[dict], batch_size: int) -> Iterator[list[dict]]:
    """Consecutive ``batch_size`` items: this rank's share of one global batch each."""
    while True:
        batch = list(itertools.islice(items, batch_size))
        if len(batch) < batch_size:
            return
        yield batch
