"""Seeds derived from the run's seed: each epoch's data order and each sample's augmentation draw
from their own generator, so that a resumed run draws exactly what an uninterrupted one would."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)
