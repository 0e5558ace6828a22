"""Training from the prepared cache (batched loader) is the same run as from the JPEGs."""

import csv

import pytest
import torch
from safetensors.torch import load_file

from hgpose.data.coco import annotation_path
from hgpose.data.prepare import prepare_cache
from hgpose.model.hourglass import ModelConfig
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train

TINY = ModelConfig(depth=2, features=16, input_size=64)


@pytest.mark.slow
def test_a_run_from_the_cache_matches_a_run_from_the_jpegs(synth_dataset, tmp_path):
    prepare_cache(annotation_path(synth_dataset, "train2017"), synth_dataset / "train2017", 64, tmp_path / "cache",
                  progress=False, workers=1)
    runs = {}
    for cache, workers in (("off", 0), ("auto", 2)):
        config = TrainConfig(data=str(synth_dataset), out=str(tmp_path / cache), epochs=1, batch_size=8,
                             workers=workers, progress=False, cache=cache, cache_dir=str(tmp_path / "cache"),
                             model=TINY)
        runs[cache] = train(config)
    assert "cache data" in (runs["auto"] / "train.log").read_text()
    metrics = {}
    for cache, run in runs.items():
        with open(run / "metrics.csv") as f:
            metrics[cache] = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]
    assert metrics["off"] == metrics["auto"]
    a, b = (load_file(str(run / "last.safetensors")) for run in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
