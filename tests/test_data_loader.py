"""DataLoader order: a function of (seed, epoch) only, split across ranks without overlap."""

import torch

from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.loader import EpochSampler, make_loader


class Positions(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": torch.tensor(i)}


def _order(**kwargs):
    return torch.cat([b["index"] for b in make_loader(Positions(50), 8, **kwargs)]).tolist()


def test_order_is_fixed_by_seed_and_epoch():
    first = _order(shuffle=True, seed=1, epoch=3)
    assert first == _order(shuffle=True, seed=1, epoch=3)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first != _order(shuffle=True, seed=1, epoch=4)
    assert first != _order(shuffle=True, seed=2, epoch=3)
    assert _order(shuffle=False, seed=1, epoch=3) == list(range(50))


def test_ranks_share_out_one_epoch():
    one = EpochSampler(50, shuffle=True, seed=1, epoch=3).indices()
    ranks = [EpochSampler(50, shuffle=True, seed=1, epoch=3, rank=r, world_size=4).indices() for r in range(4)]
    assert [len(r) for r in ranks] == [13] * 4  # padded by wrapping so every rank takes the same steps
    assert sorted(sum(ranks, [])) == sorted(one + one[:2])
    dropped = [EpochSampler(50, shuffle=True, seed=1, epoch=3, rank=r, world_size=4, drop_last=True) for r in range(4)]
    assert [len(list(s)) for s in dropped] == [12] * 4
    assert len({i for s in dropped for i in s}) == 48


def test_workers_give_the_same_batches_as_the_main_process(synth_dataset):
    dataset = PersonDataset(load_split(synth_dataset, "val2017"), 64, cache="off")
    main = list(make_loader(dataset, 4, shuffle=True, seed=5, epoch=2, workers=0))
    workers = list(make_loader(dataset, 4, shuffle=True, seed=5, epoch=2, workers=2))
    assert len(main) == len(workers) == -(-len(dataset) // 4)
    for a, b in zip(main, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not make_loader(dataset, 4, shuffle=False).pin_memory


# --- batches from a prepared cache --------------------------------------------------------------------


def _prepared(synth_dataset, cache_dir, part="train"):
    from hgpose.data.coco import annotation_path, build_splits
    from hgpose.data.prepare import prepare_cache

    prepare_cache(annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017", 64, cache_dir,
                  progress=False, workers=1)
    index = build_splits(synth_dataset, val_fraction=0.25, verbose=False)[part]
    cached = PersonDataset(index, 64, cache_dir=cache_dir)
    assert cached.using_cache
    return PersonDataset(index, 64, cache="off"), cached


def _same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def test_cache_loader_reads_whole_batches_equal_to_the_per_sample_path(synth_dataset, tmp_path):
    from hgpose.data.loader import BatchLoader, CachedBatches

    raw, cached = _prepared(synth_dataset, tmp_path, "val")  # a held-out part: rows are not 0..N-1
    loader = make_loader(cached, 5, shuffle=True, seed=3, epoch=1)
    assert isinstance(loader, BatchLoader) and isinstance(loader.dataset, CachedBatches)
    n = len(cached)  # 9 people in this held-out part of the generated data
    assert n > 5 and len(loader) == -(-n // 5) and len(loader.sampler.sampler) == n  # whole batches of 5
    for options in ({"shuffle": True, "seed": 3, "epoch": 1}, {"shuffle": False},
                    {"shuffle": True, "seed": 3, "epoch": 2, "start": 5},  # resuming inside an epoch
                    {"shuffle": True, "seed": 3, "epoch": 2, "rank": 1, "world_size": 3},
                    {"shuffle": True, "seed": 3, "epoch": 2, "rank": 2, "world_size": 3, "drop_last": True}):
        _same_batches(make_loader(raw, 3, **options), make_loader(cached, 3, **options))


def test_cache_loader_with_workers_gives_the_same_batches(synth_dataset, tmp_path):
    _, cached = _prepared(synth_dataset, tmp_path)
    for batch_size in (8, 2):  # 17 batches of 2: the workers' ring of 6 slots wraps around twice
        _same_batches(make_loader(cached, batch_size, shuffle=True, seed=1, epoch=4, workers=0),
                      make_loader(cached, batch_size, shuffle=True, seed=1, epoch=4, workers=2))


def test_invalid_rows_come_back_invalid_in_a_batch(tiny_coco, tmp_path):
    from hgpose.data.prepare import prepare_cache

    good, missing = tiny_coco.add_image(), tiny_coco.add_image(write=False)
    for image in (good, missing, good):
        tiny_coco.add_person(image)
    root = tiny_coco.write()
    prepare_cache(tiny_coco.annotation_file(), root / "train2017", 64, tmp_path, progress=False)
    cached = PersonDataset(load_split(root, "train2017"), 64, cache_dir=tmp_path)
    raw = PersonDataset(load_split(root, "train2017"), 64, cache="off")
    (batch,) = make_loader(cached, 3, shuffle=False)
    assert batch["valid"].tolist() == [True, False, True] and batch["visibility"][1].sum() == 0
    _same_batches([batch], make_loader(raw, 3, shuffle=False))


def _read_bytes() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def test_a_cold_epoch_reads_about_the_crop_bytes_it_uses(synth_dataset, tmp_path):
    import os

    import pytest

    _, cached = _prepared(synth_dataset, tmp_path)
    crops = tmp_path / "train2017_64" / "crops.u8"
    fd = os.open(crops, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache: the epoch reads the disk
    os.close(fd)
    before = _read_bytes()
    samples = sum(len(b["valid"]) for b in make_loader(cached, 8, shuffle=True, seed=0, epoch=1))
    read = _read_bytes() - before
    if read == 0:
        pytest.skip("this filesystem reports no read_bytes (or keeps the pages)")
    used = samples * 3 * 64 * 64
    assert used <= read <= 1.1 * used
