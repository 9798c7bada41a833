"""Training and test data loaders over dataset records, sharded by rank like detectron2's samplers.

Training: an endless stream of image indices, reshuffled every pass by ``(seed, pass)``; process ``rank``
takes positions ``rank, rank + world_size, ...`` of that stream (disjoint, deterministic shards, as
detectron2's ``TrainingSampler``). The augmentation of stream position ``k`` draws from its own generator
seeded with ``(seed, k)``, so a batch is the same whatever NUM_WORKERS is. Test: each rank takes one
contiguous slice of the images in id order (detectron2's ``InferenceSampler``), batch size 1.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..errors import ConfigError
from .catalog import DatasetSpec
from .coco import load_records
from .mapper import DatasetMapper


def build_train_loader(cfg: Any, dataset_spec: DatasetSpec, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                       num_workers: Optional[int] = None, start_iter: int = 0) -> Iterator[list[dict]]:
    """An endless iterator of batches (lists of mapped dicts), SOLVER.IMS_PER_BATCH // world_size per batch.

    ``start_iter`` (resuming) skips the first ``start_iter`` batches' worth of this rank's stream, so the run
    goes on with unseen positions; with aspect-ratio grouping the skipped count is the same but batches
    that were half full at the interruption start empty.
    """
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if total % world_size:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the {world_size} processes")
    records = load_records(dataset_spec, filter_empty=bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))
    batch_size = total // world_size
    stream = _TrainStream(records, DatasetMapper(cfg, is_train=True), seed, rank, world_size,
                          skip=start_iter * batch_size)
    loader = DataLoader(stream, batch_size=None, collate_fn=_identity,
                        num_workers=_workers(cfg, num_workers), persistent_workers=False)
    landscape = [r["width"] > r["height"] for r in records] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    return _batches(iter(loader), batch_size, landscape)


def build_test_loader(cfg: Any, dataset_spec: DatasetSpec, *, rank: int = 0, world_size: int = 1,
                      max_images: Optional[int] = None, num_workers: Optional[int] = None) -> DataLoader:
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
    return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_identity,
                      num_workers=_workers(cfg, num_workers))


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """[begin, end) of rank's contiguous share of ``total`` items; the first ``total % world_size`` get one more."""
    base, extra = divmod(total, world_size)
    begin = rank * base + min(rank, extra)
    return begin, begin + base + (1 if rank < extra else 0)


def _identity(batch: Any) -> Any:
    return batch


def _workers(cfg: Any, num_workers: Optional[int]) -> int:
    return int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers)


class _MappedList(Dataset):
    def __init__(self, records: list[dict], mapper: DatasetMapper) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index])


class _TrainStream(IterableDataset):
    """This rank's share of the endless shuffled stream, mapped; each worker takes every Nth item of it."""

    def __init__(self, records: list[dict], mapper: DatasetMapper, seed: int, rank: int, world_size: int,
                 skip: int = 0) -> None:
        self.records, self.mapper = records, mapper
        self.seed, self.rank, self.world_size, self.skip = int(seed), rank, world_size, skip

    def positions(self) -> Iterator[tuple[int, int]]:
        """(stream position, record index) pairs of this rank, endlessly, after the first ``skip``."""
        def stream() -> Iterator[int]:
            for epoch in itertools.count():
                yield from np.random.default_rng([self.seed, epoch]).permutation(len(self.records)).tolist()

        start = self.rank + self.skip * self.world_size
        return itertools.islice(enumerate(stream()), start, None, self.world_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.positions()
        if info is not None:  # DataLoader collects from its workers round-robin, so order is kept
            mine = itertools.islice(mine, info.id, None, info.num_workers)
        for position, index in mine:
            rng = np.random.default_rng([self.seed, position])
            yield {"record_index": index, **self.mapper(self.records[index], rng)}


def _batches(items: Iterator[dict], batch_size: int, landscape: Optional[list[bool]]) -> Iterator[list[dict]]:
    """Group mapped dicts into batches; with ``landscape`` (per record), only same-orientation images together."""
    buckets: dict[bool, list[dict]] = {True: [], False: []}
    for item in items:
        index = item.pop("record_index")
        key = landscape[index] if landscape is not None else True
        bucket = buckets[key]
        bucket.append(item)
        if len(bucket) == batch_size:
            buckets[key] = []
            yield bucket

