"""Small things a user notices: an option typo names the closest valid option, `summary
--checkpoint` shows a checkpoint's model, and Figure 2 / Table 1 show the run's name, unclipped."""

import json

import pytest

from hgpose.cli import main
from hgpose.model.hourglass import ModelConfig, build_model, count_parameters
from hgpose.model.summary import model_summary
from hgpose.model.weights import save_model
from hgpose.report import write_report


@pytest.mark.parametrize("argv, line", [
    (["train", "--data", "d", "--epohcs", "3"], "hgpose train: error: unknown option --epohcs; did you mean --epochs?"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--min-box-scroe=0.3"],
     "hgpose evaluate: error: unknown option --min-box-scroe; did you mean --min-box-score?"),
    (["summary", "--zzz"], "hgpose summary: error: unknown option --zzz; see hgpose summary --help"),
    (["summary", "extra"], "hgpose summary: error: unexpected argument 'extra' (see hgpose summary --help)"),
])
def test_an_option_typo_is_one_line_naming_the_closest_valid_option(argv, line, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_summary_of_a_checkpoint_shows_its_config_and_parameters(tmp_path, capsys):
    config = ModelConfig(depth=2, features=32, input_size=64, num_stacks=2)
    model = build_model(config, seed=0)
    checkpoint = save_model(model, tmp_path / "m.safetensors")
    assert main(["summary", "--checkpoint", str(checkpoint), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoint"] == str(checkpoint)
    assert summary["config"]["features"] == 32 and summary["config"]["num_stacks"] == 2
    assert summary["total_parameters"] == count_parameters(model) != model_summary()["total_parameters"]
    assert main(["summary", "--checkpoint", str(checkpoint)]) == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {checkpoint}" in text and "features 32" in text
    assert f"total parameters: {count_parameters(model):,}" in text


def test_summary_refuses_a_checkpoint_with_model_flags_and_a_missing_one(tmp_path, capsys):
    checkpoint = save_model(build_model(ModelConfig(depth=2, features=16, input_size=64)), tmp_path / "m.safetensors")
    assert main(["summary", "--checkpoint", str(checkpoint), "--features", "64"]) == 2
    assert "drop --features" in capsys.readouterr().err
    assert main(["summary", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors: checkpoint not found" in capsys.readouterr().err


def test_figure2_title_fits_the_figure_and_shows_the_run_name_for_a_long_path(tmp_path):
    run_dir = tmp_path / ("a_very_long_folder_name_for_experiments_" * 3) / "run_with_a_long_descriptive_name_2026"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_pck,lr,epoch_seconds\n"
        "1,0.03,0.031,0.10,0.00025,1.0\n2,0.02,0.025,0.20,0.00025,1.0\n3,0.015,0.022,0.25,0.00025,1.0\n")
    (run_dir / "config.yaml").write_text(f"data: {tmp_path / ('deep_data_root_' * 6) / 'coco'}\n")
    outputs = write_report(run_dir)
    table = outputs["table1.md"].read_text()
    assert str(tmp_path) not in table and "Run `run_with_a_long_descriptive_name_2026`" in table
    assert json.loads(outputs["report.json"].read_text())["run"]["run_dir"] == str(run_dir.resolve())

    from hgpose.report import figure2, read_metrics, shown_identity  # the figure write_report drew, re-drawn
    from hgpose.train.run_info import identity_markdown, run_identity

    shown = shown_identity(run_identity(run_dir))
    fig = figure2(read_metrics(run_dir / "metrics.csv"), title=f"{shown['run_dir']}: curves",
                  subtitle=identity_markdown(shown).replace("`", ""))
    fig.canvas.draw()
    title = fig._suptitle
    box, page = title.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)  # not clipped at either edge
    assert str(tmp_path) not in title.get_text()
