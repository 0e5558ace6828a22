"""DataLoaders whose sample order is a function of (seed, epoch) alone, so a run can resume exactly.

From a prepared cache the loader deals in whole batches: a BatchSampler over the epoch's order hands
each worker a list of positions, CachedBatches reads their crops with a few positioned reads (sorted
within the batch, straight into the batch tensor) and takes keypoints, visibility and validity from
in-memory arrays, so there are no per-sample dicts to collate. The JPEG path keeps one sample per item.
On CUDA, batches land in pinned memory and `device_batches` copies the next one on a side stream
while the current step runs; uint8 images cross the bus (4x less than float).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from hgpose.data.cache import open_cache
from hgpose.data.images import single_threaded_opencv
from hgpose.runtime.seeds import epoch_seed


class EpochSampler(Sampler[int]):
    """One rank's indices for one epoch: a permutation fixed by (seed, epoch), or 0..N-1 in order.

    With world_size > 1 the list is padded by wrapping around to a multiple of world_size (or cut to
    one with drop_last) and dealt out rank::world_size, as DistributedSampler does, so every rank runs
    the same number of steps; padded repeats can be recognised by the samples' "index". With
    world_size 1 it is simply the whole permutation.
    """

    def __init__(self, length: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, start: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.length, self.shuffle, self.seed, self.epoch = length, shuffle, seed, epoch
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.start = start  # skip this rank's first `start` indices (resuming inside an epoch)

    def indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        if self.world_size > 1:
            if self.drop_last:
                order = order[: self.length // self.world_size * self.world_size]
            elif self.length:
                pad = -self.length % self.world_size
                order = torch.cat([order, order.repeat(pad // self.length + 1)[:pad]])
            order = order[self.rank :: self.world_size]
        return order[self.start :].tolist()

    def __iter__(self):
        return iter(self.indices())

    def __len__(self) -> int:
        if self.world_size == 1:
            full = self.length
        elif self.drop_last:
            full = self.length // self.world_size
        else:
            full = -(-self.length // self.world_size)
        return max(full - self.start, 0)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random from torch's per-worker seed.

    No cv2.setNumThreads here: in a forked child it can deadlock on the parent's OpenCV thread pool
    (seen in practice); make_loader sets one OpenCV thread in the parent before the fork instead.
    """
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)


class CachedBatches(Dataset):
    """A PersonDataset that reads from a prepared cache, indexed by whole batches.

    dataset[(number, positions)] is batch `number` of the epoch, the dataset positions `positions`:
    image uint8 (B, 3, S, S), keypoints float32 (B, 17, 2), visibility int64 (B, 17) (0 for an invalid
    sample), index int64 (B,), valid bool (B,), as numpy arrays (BatchLoader makes them the tensors
    the per-sample path collates). In a worker process the crops go into slot number % R of a
    shared-memory ring instead, and "image" is that slot: handing a tensor from a worker to the main
    process costs a new shared-memory segment and a file-descriptor handover each time (~1 ms a
    tensor, several times the reading itself), a slot number costs nothing.
    """

    def __init__(self, dataset):
        self.reader = open_cache(dataset.cache_path)
        self.rows = np.asarray(dataset.index.rows, dtype=np.int64)
        self.keypoints = dataset.keypoints
        self.visibility = dataset.visibility
        self.ring: torch.Tensor | None = None  # (R, batch, 3, S, S) uint8 shared memory, set by BatchLoader

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> dict:
        number, positions = item
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        if self.ring is not None and torch.utils.data.get_worker_info() is not None:
            slot = number % len(self.ring)
            self.reader.read_rows(rows, out=self.ring[slot, : len(rows)].numpy())
            image = slot
        else:
            image = self.reader.read_rows(rows)
        valid = self.reader.valid[rows]
        return {
            "image": image,
            "keypoints": self.keypoints[positions],
            "visibility": self.visibility[positions] * valid[:, None],
            "index": positions,
            "valid": valid,
        }


class _NumberedBatches(Sampler):
    """(batch number, positions) for each batch of a BatchSampler."""

    def __init__(self, batches: BatchSampler):
        self.batches = batches

    def __iter__(self):
        return enumerate(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_is(batch):
    return batch


class BatchLoader:
    """Iterates a DataLoader of CachedBatches, yielding dicts of tensors like a DataLoader's.

    With workers, a ring of R = workers x prefetch + 2 batch slots in shared memory is made before
    they start (they inherit it): the DataLoader never has more than workers x prefetch batches in
    flight beyond the one it hands over, so a slot is rewritten only after its batch was copied out.
    On CUDA the copy goes to pinned memory (what pin_memory would have done).
    """

    def __init__(self, loader: DataLoader, batch_sampler: BatchSampler, pin_memory: bool):
        self.loader, self.sampler, self.pin_memory = loader, batch_sampler, pin_memory
        self.batch_sampler, self.batch_size, self.dataset = None, None, loader.dataset
        self.num_workers = loader.num_workers

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        dataset: CachedBatches = self.loader.dataset
        ring = None
        if self.num_workers:
            slots = self.num_workers * self.loader.prefetch_factor + 2
            shape = (slots, self.sampler.batch_size, *dataset.reader.row_shape)
            storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
            ring = torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)
        dataset.ring = ring
        try:
            for batch in self.loader:
                image = batch["image"]
                if isinstance(image, int):
                    source = ring[image, : len(batch["valid"])]
                    image = torch.empty(source.shape, dtype=torch.uint8, pin_memory=self.pin_memory)
                    image.copy_(source)
                else:
                    image = torch.from_numpy(image)
                    image = image.pin_memory() if self.pin_memory else image
                yield {"image": image, **{key: torch.from_numpy(batch[key])
                                          for key in ("keypoints", "visibility", "index", "valid")}}
        finally:
            dataset.ring = None


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, workers: int = 0,
                device="cpu", drop_last: bool = False, rank: int = 0, world_size: int = 1,
                start: int = 0) -> DataLoader | BatchLoader:
    """A DataLoader for one epoch (make a new one per epoch; workers are not persistent).

    start: skip the first `start` samples of this rank's order (resuming inside an epoch).
    A dataset reading a prepared cache is loaded batch by batch (CachedBatches); the batches are
    the same either way.
    """
    if workers:
        single_threaded_opencv()
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank,
                           world_size=world_size, drop_last=drop_last, start=start)
    common = {
        "num_workers": workers,
        "pin_memory": torch.device(device).type == "cuda",
        "worker_init_fn": seed_worker if workers else None,
        "generator": torch.Generator().manual_seed(epoch_seed(seed, epoch)),  # worker seeds follow (seed, epoch)
        "persistent_workers": False,
    }
    if getattr(dataset, "using_cache", False):
        batches = BatchSampler(sampler, batch_size, drop_last)
        pin = common.pop("pin_memory")
        loader = DataLoader(CachedBatches(dataset), batch_size=None, collate_fn=_as_is,
                            sampler=_NumberedBatches(batches), pin_memory=False,
                            prefetch_factor=2 if workers else None, **common)
        return BatchLoader(loader, batches, pin)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      prefetch_factor=4 if workers else None, **common)


# moved ahead on CUDA; "valid" and "index" stay on the host, where the loops count them without a sync
_PREFETCHED = {"image", "keypoints", "visibility"}


def device_batches(batches, device):
    """Yield the loader's batches with their image, keypoints and visibility on `device`. On CUDA the
    next batch is copied on a side stream while the caller works on the current one (pinned memory +
    non_blocking copies); elsewhere the batches pass through unchanged (the step moves them)."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    copy_stream = torch.cuda.Stream(device)

    def to_device(batch):
        with torch.cuda.stream(copy_stream):
            return {key: value.to(device, non_blocking=True) if key in _PREFETCHED else value
                    for key, value in batch.items()}

    batches = iter(batches)
    upcoming = next(batches, None)
    upcoming = to_device(upcoming) if upcoming is not None else None
    while upcoming is not None:
        current, compute = upcoming, torch.cuda.current_stream(device)
        compute.wait_stream(copy_stream)
        for key in _PREFETCHED & current.keys():
            current[key].record_stream(compute)  # the copy stream's memory is in use on this stream now
        upcoming = next(batches, None)
        upcoming = to_device(upcoming) if upcoming is not None else None
        yield current
