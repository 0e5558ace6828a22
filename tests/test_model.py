import math

import pytest
import torch
from torch import nn

from hgpose.model.hourglass import Head, Hourglass, HourglassNet, ModelConfig, Residual, build_model, count_parameters
from hgpose.model.weights import load_model, read_model_config, save_model

SMALL = ModelConfig(depth=2, features=32, input_size=64)


def test_seed_model_has_exactly_the_published_parameter_count():
    assert count_parameters(HourglassNet()) == 3_426_705


def test_default_output_shape_is_17_heatmaps_of_64x64():
    model = build_model().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, 17, 64, 64)


def test_two_stacks_give_per_stack_outputs():
    model = build_model(ModelConfig(num_stacks=2, depth=2, features=32, input_size=64)).eval()
    with torch.no_grad():
        outs = model.forward_stacks(torch.randn(1, 3, 64, 64))
    assert len(outs) == 2 and all(o.shape == (1, 17, 16, 16) for o in outs)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64), all_stacks=True).shape == (1, 2, 17, 16, 16)
    assert not torch.equal(outs[0], outs[1])
    assert len(model.merge_features) == 1 and len(model.merge_preds) == 1


def test_default_bottleneck_holds_three_residuals_at_4x4():
    model = build_model()
    seen = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: seen.append(o.shape[-1]))
        for m in model.hourglasses[0].modules()
        if isinstance(m, Residual)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    assert seen.count(4) == 3
    assert len(seen) == 4 * 3 + 1  # skip, low1, low3 per level plus the innermost one


def _forward_order(module: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order = []
    leaves = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    hooks = [m.register_forward_pre_hook(lambda mod, inp: order.append(mod)) for m in leaves]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return order


def test_residual_is_pre_activation_bn_relu_conv():
    res = Residual(8, 16).eval()
    order = _forward_order(res, torch.randn(1, 8, 8, 8))
    kinds = [type(m).__name__ for m in order]
    assert kinds == ["BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "Conv2d", "Conv2d"]
    assert [m.kernel_size for m in order if isinstance(m, nn.Conv2d)][:3] == [(1, 1), (3, 3), (1, 1)]
    # the ReLU sits between each BN and its conv: a BN output of all negatives reaches the conv as zeros
    captured = {}
    res.conv1.register_forward_pre_hook(lambda mod, inp: captured.setdefault("x", inp[0]))
    with torch.no_grad():
        res.bn1.bias.fill_(-100.0)
        res(torch.randn(1, 8, 8, 8))
    assert torch.all(captured["x"] == 0)


def test_identity_skip_creates_no_layer_and_projection_skip_does():
    assert Residual(16, 16).skip is None
    assert isinstance(Residual(8, 16).skip, nn.Conv2d)


def test_bn_after_first_conv_and_before_last_conv_and_raw_output():
    model = build_model(SMALL).eval()
    order = _forward_order(model, torch.randn(1, 3, 64, 64))
    assert order[0] is model.stem_conv and order[1] is model.stem_bn
    head: Head = model.heads[-1]
    assert order[-3:] == [head.conv, head.bn, head.out]
    # the last conv's output is returned as is: no BN or ReLU after it, so negatives survive
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        head.out.bias.fill_(-5.0)
        out = model(x)
        features = torch.relu(head.bn(head.conv(head.residual(model.hourglasses[0](model.stem(x))))))
        assert torch.equal(out, head.out(features))
    assert (out < 0).any()


def test_xavier_normal_init_statistics():
    model = build_model(seed=3)
    checked = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.all(m.bias == 0)
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            if m.weight.numel() >= 30_000:
                expected = math.sqrt(2.0 / (fan_in + fan_out))
                assert abs(m.weight.std().item() / expected - 1) < 0.03
                assert abs(m.weight.mean().item()) < 0.1 * expected
                checked += 1
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert checked > 10


def test_init_is_deterministic_for_a_seed():
    a, b, c = build_model(SMALL, seed=1), build_model(SMALL, seed=1), build_model(SMALL, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_forward_backward_step_on_cpu_changes_weights():
    model = build_model(SMALL).train()
    opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    before = model.heads[0].out.weight.detach().clone()
    loss = ((model(torch.randn(2, 3, 64, 64)) - 0.1) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    assert not torch.equal(before, model.heads[0].out.weight)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = build_model(SMALL, seed=5)
    model.train()
    model(torch.randn(4, 3, 64, 64))  # move BN running stats away from their init
    model.eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert read_model_config(path) == SMALL
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_rejects_a_pickle_and_a_foreign_file(tmp_path):
    from hgpose.runtime.files import UserError

    pickled = tmp_path / "evil.safetensors"
    torch.save({"a": torch.zeros(1)}, pickled)
    with pytest.raises(UserError, match="not a safetensors"):
        load_model(pickled)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"depth": 7}, "depth"),
        ({"input_size": 250}, "input_size"),
        ({"input_size": 96, "depth": 4}, "depth"),
        ({"features": 0}, "features"),
        ({"num_stacks": 0}, "num_stacks"),
        ({"bottleneck_residuals": 2}, "bottleneck_residuals"),
        ({"features": 33}, "features"),
    ],
)
def test_invalid_configs_raise_clear_value_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**kwargs)


def test_configurable_variants_build_and_run():
    config = ModelConfig(depth=3, residuals_per_level=2, bottleneck_residuals=5, features=64, input_size=128,
                         num_keypoints=5)
    model = build_model(config).eval()
    levels = model.hourglasses[0].levels()
    assert len(levels) == 3 and isinstance(levels[-1], Hourglass)
    assert len(levels[0].skip) == 2 and len(levels[-1].inner) == 1
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 128, 128)).shape == (1, 5, 32, 32)


def test_summary_command_prints_the_parameter_count(capsys):
    from hgpose.cli import main

    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "3,426,705" in out and "10.30" in out and "1x17x64x64" in out
    assert main(["summary", "--depth", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth" in err


def test_atomic_writes_leave_no_temp_file_and_normal_permissions(tmp_path):
    import os

    from hgpose.runtime.files import atomic_path, atomic_write_text

    path = atomic_write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello" and os.stat(path).st_mode & 0o044  # readable by others, as open() makes
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "hello" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
