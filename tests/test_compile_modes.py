"""--compile modes: parsing, old configs, and what runs on the CPU."""

import pytest
import torch

from hgpose.cli import build_parser
from hgpose.runtime.compile import compile_mode, compile_step_model, effective_mode
from hgpose.runtime.files import UserError
from hgpose.train.config import TrainConfig


def test_compile_flag_alone_keeps_its_meaning_and_takes_a_mode():
    parse = build_parser().parse_args
    assert parse(["train", "--data", "d"]).compile is None
    assert parse(["train", "--data", "d", "--compile"]).compile == "default"
    assert parse(["train", "--data", "d", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    with pytest.raises(SystemExit):
        parse(["train", "--data", "d", "--compile", "fastest"])


def test_configs_saved_before_modes_still_load():
    assert TrainConfig(data="d", compile=True).compile == "default"
    assert TrainConfig(data="d", compile=False).compile == "off"
    assert TrainConfig(data="d").compile == "off"
    with pytest.raises(UserError, match="--compile must be one of"):
        compile_mode("fastest")


def test_cuda_graphs_only_on_cuda():
    assert effective_mode("reduce-overhead", "cpu") == "default"
    assert effective_mode("reduce-overhead", "cuda") == "reduce-overhead"
    model = torch.nn.Linear(2, 2)
    assert compile_step_model(model, "off", "cpu") == (model, False)
