"""Hostile or broken checkpoints: one line (exit 2), checked from the header before anything large is
allocated; never a pickle."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.model.weights import CONFIG_METADATA_KEY, load_model, save_model
from hgpose.runtime.files import UserError
from hgpose.train.checkpoint import STATE_METADATA_KEY
from test_train import quick_config

SMALL = ModelConfig(depth=2, features=32, input_size=64)


def rewrite(path, out, tensors=None, metadata=None):
    """A copy of a safetensors file with some tensors or header entries replaced."""
    with safe_open(str(path), framework="pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata()
    save_file(tensors(original) if tensors else original, str(out), metadata=metadata(header) if metadata else header)
    return out


def test_a_huge_model_config_in_the_header_is_refused_before_building(tmp_path):
    path = save_model(build_model(SMALL), tmp_path / "ok.safetensors")
    bad = rewrite(path, tmp_path / "huge.safetensors",
                  metadata=lambda h: h | {CONFIG_METADATA_KEY: json.dumps({"features": 10**6, "input_size": 10**6})})
    with pytest.raises(UserError, match="beyond the limits"):
        load_model(bad)


def test_a_1mb_file_claiming_a_large_model_fails_on_shapes_without_a_large_allocation(tmp_path):
    # a config within the limits but ~100x this file's tensors: refused from the header alone. In a
    # child process whose address space is capped, so any large allocation would fail loudly.
    path = save_model(build_model(SMALL), tmp_path / "ok.safetensors")
    big = ModelConfig(depth=2, features=4096, input_size=64).to_json()  # ~5e8 parameters: ~2 GB of fp32
    bad = rewrite(path, tmp_path / "claims_big.safetensors", metadata=lambda h: h | {CONFIG_METADATA_KEY: big})
    assert bad.stat().st_size < 2 << 20
    code = (
        "import resource, sys; from hgpose.model import load_model; from hgpose.runtime.files import UserError\n"
        "in_use = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (in_use + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "try:\n    load_model(sys.argv[1])\nexcept UserError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "needs float32" in result.stdout and "claims_big.safetensors: tensor" in result.stdout, result.stdout


def test_wrong_shape_and_missing_tensor_are_one_line(tmp_path):
    path = save_model(build_model(SMALL), tmp_path / "ok.safetensors")
    wrong = rewrite(path, tmp_path / "wrong.safetensors",
                    tensors=lambda t: t | {"stem_conv.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(UserError, match=r"stem_conv.weight is F32 \[64, 3, 3, 3\].*needs float32 \[64, 3, 7, 7\]"):
        load_model(wrong)
    missing = rewrite(path, tmp_path / "missing.safetensors",
                      tensors=lambda t: {k: v for k, v in t.items() if k != "stem_bn.running_var"})
    with pytest.raises(UserError, match="lacks 1 model tensors"):
        load_model(missing)


@pytest.fixture(scope="module")
def finished_run(synth_dataset, tmp_path_factory):
    from hgpose.train.loop import train

    return train(quick_config(synth_dataset, tmp_path_factory.mktemp("hostile") / "run", epochs=1, subset=16,
                              model=SMALL))


@pytest.mark.parametrize("damage, message", [
    ("state_json", "corrupt training state"),
    ("state_key", "'history' missing"),
    ("optimizer_shape", "optimizer tensor optimizer.0.square_avg has shape"),
    ("optimizer_id", "matches no parameter"),
    ("rng", "RNG state"),
    ("model_shape", "tensor stem_conv.weight"),
])
def test_a_damaged_training_checkpoint_is_one_line_on_resume(finished_run, tmp_path, capsys, damage, message):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "last.safetensors"
    original = tmp_path / "original.safetensors"
    shutil.copy(last, original)

    def state(h):
        values = json.loads(h[STATE_METADATA_KEY])
        values.pop("history")
        return h | {STATE_METADATA_KEY: json.dumps(values)}

    changes = {
        "state_json": dict(metadata=lambda h: h | {STATE_METADATA_KEY: "{not json"}),
        "state_key": dict(metadata=state),
        "optimizer_shape": dict(tensors=lambda t: t | {"optimizer.0.square_avg": torch.zeros(5, 5)}),
        "optimizer_id": dict(tensors=lambda t: t | {"optimizer.999.square_avg": torch.zeros(1)}),
        "rng": dict(tensors=lambda t: t | {"rng.torch_cpu": torch.zeros(3, dtype=torch.uint8)}),
        "model_shape": dict(tensors=lambda t: t | {"stem_conv.weight": torch.zeros(1)}),
    }
    rewrite(original, last, **changes[damage])
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_resumed_optimizer_state_has_the_parameters_memory_layout(finished_run):
    # the uninterrupted run's RMSprop state is channels-last like the weights; a resumed run's must be too
    from hgpose.train.checkpoint import load_training_checkpoint

    model = build_model(SMALL).to(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    load_training_checkpoint(finished_run / "last.safetensors", model, optimizer)
    conv = model.stem_conv.weight
    assert conv.stride() != conv.contiguous().stride()  # a 4-d weight that really is channels-last
    for param in model.parameters():
        assert optimizer.state[param]["square_avg"].stride() == param.stride()
