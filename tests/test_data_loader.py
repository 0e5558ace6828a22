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
