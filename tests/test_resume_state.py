"""Resume restores every random state a run has: torch's, numpy's and Python's global RNGs (saved in
last.safetensors) and the loader's (its order and its generator, a function of seed and epoch).

Today's training draws nothing from the global RNGs, so a resume that forgot one would go unnoticed by
the bit-identical weight tests; here every training step draws from all three, as an op that used them
would, so a state not restored shows in the very next step."""

from __future__ import annotations

import hashlib
import os
import random
import signal

import numpy as np
import pytest
import torch

import hgpose.train.loop as train_module
from hgpose.model.hourglass import ModelConfig
from hgpose.train.checkpoint import read_training_state
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from hgpose.train.run_dir import resume_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ModelConfig(depth=2, features=32, input_size=64)
STEPS_PER_EPOCH = 4  # a seeded subset of 32 training instances, batch 8


def digest(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


def global_states() -> dict[str, str]:
    numpy_state = np.random.get_state(legacy=True)
    return {"torch": digest(torch.get_rng_state().tolist()),
            "numpy": digest(numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
            "python": digest(random.getstate())}


class Probe:
    """Stands in for the loop's train_step and make_loader. Before each step it records the batch's
    samples (the loader's order) and the three global RNG states, then draws from each; for each
    training loader it records the state of the generator its worker seeds come from. After
    `interrupt_after` steps it sends this process a SIGINT (Ctrl-C: finish the step, save, stop)."""

    def __init__(self, monkeypatch, interrupt_after: int | None = None):
        self.steps: list[dict] = []
        self.loaders: dict[int, str] = {}
        self.interrupt_after = interrupt_after
        self.real_step, self.real_loader = train_module.train_step, train_module.make_loader
        monkeypatch.setattr(train_module, "train_step", self.step)
        monkeypatch.setattr(train_module, "make_loader", self.make_loader)

    def step(self, model, optimizer, batch, *args, **kwargs):
        self.steps.append({"samples": batch["index"].tolist(), **global_states()})
        torch.rand(3), np.random.random(3), random.random()  # what a training op using them would draw
        loss = self.real_step(model, optimizer, batch, *args, **kwargs)
        if len(self.steps) == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    def make_loader(self, dataset, batch_size, *, shuffle, **kwargs):
        loader = self.real_loader(dataset, batch_size, shuffle=shuffle, **kwargs)
        if shuffle:
            self.loaders[kwargs["epoch"]] = digest(loader.generator.get_state().tolist())
        return loader


def scramble_global_rngs(seed: int) -> None:
    """What a fresh process (or other work in this one) leaves in the global RNGs before a run."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_resume_mid_epoch_restores_torch_numpy_python_and_loader_random_states(synth_dataset, tmp_path,
                                                                               monkeypatch):
    def config(out):
        return TrainConfig(data=str(synth_dataset), out=str(out), epochs=2, batch_size=8, workers=0, progress=False,
                           cache="off", model=TINY, precision="fp32", val_fraction=0.3, subset=32)

    scramble_global_rngs(1)
    with monkeypatch.context() as patch:
        uninterrupted = Probe(patch)
        train(config(tmp_path / "whole"))
    assert len(uninterrupted.steps) == 2 * STEPS_PER_EPOCH

    stop_at = STEPS_PER_EPOCH + 2  # mid epoch 2
    scramble_global_rngs(2)
    with monkeypatch.context() as patch:
        before = Probe(patch, interrupt_after=stop_at)
        run_dir = train(config(tmp_path / "interrupted"))
    state = read_training_state(run_dir / "last.safetensors")
    assert (state["epoch"], state["step_in_epoch"]) == (2, 2), "the SIGINT did not stop the run after step 2 of epoch 2"
    scramble_global_rngs(3)  # a resume starts in another process, with other global RNG states
    with monkeypatch.context() as patch:
        after = Probe(patch)
        train(resume_config(run_dir, {}), resume=run_dir)

    resumed = before.steps + after.steps
    for number, (expected, found) in enumerate(zip(uninterrupted.steps, resumed), start=1):
        differing = {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}
        assert not differing, (
            f"step {number} (epoch {(number - 1) // STEPS_PER_EPOCH + 1}) of the run resumed at step {stop_at}: "
            f"{', '.join(differing)} differ from the uninterrupted run's (expected, found): {differing}")
    assert len(resumed) == len(uninterrupted.steps), (
        f"{len(resumed)} steps with a resume at step {stop_at}, {len(uninterrupted.steps)} without")
    assert after.loaders == {2: uninterrupted.loaders[2]}, (
        f"the resumed epoch 2 loader's generator (the seed of its workers) {after.loaders} differs from the "
        f"uninterrupted run's {uninterrupted.loaders[2]}")
    assert uninterrupted.loaders[1] != uninterrupted.loaders[2]


@pytest.mark.parametrize("damage", ["numpy", "python"])
def test_a_damaged_saved_rng_state_is_one_line_on_resume(synth_dataset, tmp_path, capsys, damage):
    import json

    from hgpose.cli import main
    from hgpose.train.checkpoint import STATE_METADATA_KEY
    from test_checkpoint_hostile import rewrite

    run_dir = train(TrainConfig(data=str(synth_dataset), out=str(tmp_path / "run"), epochs=1, batch_size=8, workers=0,
                                progress=False, cache="off", model=TINY, precision="fp32", subset=8))
    last = run_dir / "last.safetensors"

    def cut(header):
        state = json.loads(header[STATE_METADATA_KEY])
        state["host_rng"][damage][1] = state["host_rng"][damage][1][:3]  # a state vector of 3 numbers
        return header | {STATE_METADATA_KEY: json.dumps(state)}

    rewrite(last, tmp_path / "damaged.safetensors", metadata=cut).replace(last)
    capsys.readouterr()  # what the run printed
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{last}: corrupt training state (" in err and len(err.splitlines()) == 1, err
