import pytest

from hgpose.train.loop import PlateauDrop


def drops(sequence, patience=5):
    rule = PlateauDrop(patience=patience)
    return [epoch for epoch, value in enumerate(sequence, start=1) if rule.update(epoch, value)], rule


def test_drop_happens_once_at_the_fifth_epoch_without_a_new_best():
    # best 0.30 at epoch 3; epochs 4-8 do not beat it -> drop after epoch 8
    sequence = [0.10, 0.20, 0.30, 0.29, 0.30, 0.25, 0.28, 0.27, 0.26, 0.20, 0.10, 0.05, 0.01, 0.0, 0.0]
    epochs, rule = drops(sequence)
    assert epochs == [8]
    assert rule.dropped_at == 8


def test_an_improvement_resets_the_count():
    sequence = [0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    epochs, _ = drops(sequence)
    assert epochs == [10]  # the count restarts at epoch 5's new best


def test_equal_pck_is_not_an_improvement():
    epochs, _ = drops([0.5] * 7)
    assert epochs == [6]


def test_no_drop_while_pck_keeps_improving():
    epochs, rule = drops([i / 100 for i in range(30)])
    assert epochs == [] and rule.dropped_at is None


def test_never_drops_twice_even_after_long_stalls():
    epochs, _ = drops([0.4] + [0.1] * 40 + [0.5] + [0.2] * 40)
    assert epochs == [6]


@pytest.mark.parametrize("patience", [1, 3])
def test_patience_is_an_option(patience):
    epochs, _ = drops([0.3, 0.2, 0.2, 0.2, 0.2], patience=patience)
    assert epochs == [1 + patience]


def test_precision_auto_resolves_to_a_concrete_choice_and_explicit_choices_pass_through():
    import torch

    from hgpose.runtime.precision import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert resolve_precision("auto", cpu) == expected
