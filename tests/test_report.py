"""Figure 2 and Table 1 from a run's metrics.csv (and test_eval.json)."""

import json

import matplotlib.image
import pytest

from hgpose.cli import main
from hgpose.report import figure2, lr_drop_epoch, read_metrics, table1, table1_markdown, write_report
from hgpose.runtime.files import UserError

# 8 epochs: the LR drops after epoch 5; best train loss epoch 8, best val loss epoch 4 (tied with 6:
# the earliest wins), best val PCK epoch 7
METRICS = """epoch,lr,train_loss,val_loss,val_pck,epoch_seconds
1,0.00025,9.1e-05,8.8e-05,0.101,70.0
2,0.00025,6.2e-05,6.4e-05,0.254,70.1
3,0.00025,5.5e-05,5.9e-05,0.301,69.8
4,0.00025,5.1e-05,5.15e-05,0.350,70.2
5,0.00025,4.8e-05,5.3e-05,0.349,70.0
6,5e-05,4.5e-05,5.15e-05,0.420,70.3
7,5e-05,4.19e-05,5.43e-05,0.433,70.1
8,5e-05,4.11e-05,5.45e-05,0.430,70.0
"""


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS)
    return tmp_path


def test_table1_rows(run_dir):
    metrics = read_metrics(run_dir / "metrics.csv")
    rows = table1(metrics)
    assert [r["Description"] for r in rows] == ["Best training loss", "Best validation loss",
                                                "Best validation accuracy"]
    assert [r["Epoch"] for r in rows] == [8, 4, 7]
    assert rows[2] == {"Description": "Best validation accuracy", "Epoch": 7, "Training loss": 4.19e-05,
                       "Validation loss": 5.43e-05, "Validation accuracy": 0.433}
    markdown = table1_markdown(rows)
    assert "| Best validation accuracy | 7 | 4.19e-05 | 5.43e-05 | 0.433 |" in markdown
    assert "| Best training loss | 8 | 4.11e-05 | 5.45e-05 | 0.430 |" in markdown
    assert lr_drop_epoch(metrics) == 6


def test_lr_drop_epoch_absent_and_nan_never_best():
    metrics = [{"epoch": 1, "lr": 1.0, "train_loss": float("nan"), "val_loss": 2.0, "val_pck": float("nan")},
               {"epoch": 2, "lr": 1.0, "train_loss": 3.0, "val_loss": 2.0, "val_pck": 0.1}]
    assert lr_drop_epoch(metrics) is None
    assert [r["Epoch"] for r in table1(metrics)] == [2, 1, 2]


def test_figure2_is_a_2x3_grid(run_dir):
    fig = figure2(read_metrics(run_dir / "metrics.csv"))
    assert len(fig.axes) == 6
    grid = sorted((ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in fig.axes)
    assert grid == [(r, c) for r in range(2) for c in range(3)]
    top, bottom = fig.axes[0], fig.axes[3]
    assert list(top.lines[0].get_xdata()) == list(range(1, 9))
    assert list(bottom.lines[0].get_xdata()) == list(range(2, 9))  # bottom row starts at epoch 2
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert "LR drop (after epoch 5)" in labels and "best: epoch 8" in labels


def test_write_report(run_dir):
    test_eval = {"split": "val2017", "checkpoint": "best.safetensors", "pck_style": "seed",
                 "pck": {"all": {"overall": 0.441}}}
    (run_dir / "test_eval.json").write_text(json.dumps(test_eval))
    outputs = write_report(run_dir)
    assert set(outputs) == {"figure2.png", "figure2.pdf", "table1.md", "table1.csv", "report.json"}
    image = matplotlib.image.imread(outputs["figure2.png"])
    assert image.shape[1] > image.shape[0] > 600  # a wide 2x3 figure at 150 dpi
    assert outputs["figure2.pdf"].read_bytes().startswith(b"%PDF")
    csv_lines = outputs["table1.csv"].read_text().splitlines()
    assert csv_lines[0] == "Description,Epoch,Training loss,Validation loss,Validation accuracy"
    assert csv_lines[3] == "Best validation accuracy,7,4.19e-05,5.43e-05,0.433"
    text = outputs["table1.md"].read_text()
    assert "epoch 7, `checkpoints/epoch_007.safetensors`" in text
    assert "Test PCK (val2017, ground-truth boxes, all annotated keypoints v = 1 and 2, `best.safetensors`): 0.441" \
        in text
    report = json.loads(outputs["report.json"].read_text())
    assert report["selected_model"]["epoch"] == 7 and report["selected_model"]["test_pck"] == 0.441


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.csv: metrics file not found" in capsys.readouterr().err
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss,val_loss,val_pck,epoch_seconds\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "no epochs recorded" in capsys.readouterr().err
    (tmp_path / "metrics.csv").write_text("epoch,lr\n1,0.1\n")
    with pytest.raises(UserError, match="missing column"):
        read_metrics(tmp_path / "metrics.csv")
    assert main(["report", str(tmp_path / "absent")]) == 2


def test_report_cli(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "| Best validation loss | 4 | 5.10e-05 | 5.15e-05 | 0.350 |" in out and "figure2.png" in out


def _metrics(rows) -> list[dict]:
    return [{"epoch": e, "lr": 1e-3, "train_loss": t, "val_loss": v, "val_pck": p} for e, t, v, p in rows]


@pytest.mark.parametrize("epochs", [1, 2])
def test_figure2_of_a_short_run_has_no_warning_and_no_empty_legend(epochs, tmp_path):
    import warnings

    rows = [(1, 2e-3, 3e-3, 0.2), (2, 1e-3, 4e-3, 0.1)][:epochs]  # epoch 1 is best on val: the
    with warnings.catch_warnings():  # bottom row (from epoch 2) has nothing of its own to label
        warnings.simplefilter("error")
        fig = figure2(_metrics(rows), title="short", subtitle="identity")
        fig.savefig(tmp_path / "figure2.png", dpi=50)  # layout and drawing warnings come here
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is None or [t.get_text() for t in legend.get_texts()]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks)  # integer epoch ticks only
        assert bool(ticks) == bool(ax.lines)  # an empty panel ("needs 2 or more epochs") has no axis
    assert fig.axes[5].get_legend() is None  # bottom-row PCK: its best (epoch 1) is not shown there


def _height(ax, x, y) -> float:
    """Where a data point is drawn, as a fraction of the panel's height."""
    return ax.transAxes.inverted().transform(ax.transData.transform((x, y)))[1]


def test_figure2_losses_stay_readable_when_one_epoch_spikes():
    rows = [(e, 1e-3 / e, 2e-3 / e, 0.1 * e) for e in range(1, 9)]
    rows[4] = (5, 5.0, 40.0, 0.3)  # one epoch's losses 10,000x the others
    fig = figure2(_metrics(rows))
    for index, column in ((0, 1), (1, 2), (3, 1), (4, 2)):  # training and validation loss, both rows
        ax = fig.axes[index]
        assert ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        values = [row[column] for row in rows]
        assert low < min(values) and high > max(values)
        # the ordinary epochs are told apart (linear: 0.004% of the height apart, a flat line)
        assert _height(ax, 2, values[1]) - _height(ax, 8, values[7]) > 0.05
    assert fig.axes[2].get_yscale() == "linear"  # PCK stays linear


def test_table1_and_the_report_carry_the_run_identity(run_dir):
    from hgpose import __version__
    from hgpose.train.run_info import git_commit, write_run_info

    (run_dir / "config.yaml").write_text("data: /datasets/coco\nepochs: 8\n")
    write_run_info(run_dir)
    outputs = write_report(run_dir)
    text = outputs["table1.md"].read_text()
    identity_line = text.strip().splitlines()[-1]
    assert identity_line.startswith(f"Run `{run_dir.name}`: data `coco`; started 20")  # names, not paths
    assert f"hgpose {__version__}, commit {git_commit() or 'unknown'}." in identity_line
    assert "did not record" not in identity_line
    run = json.loads(outputs["report.json"].read_text())["run"]
    assert run["run_dir"] == str(run_dir.resolve())  # the JSON keeps the paths
    assert run["data"] == "/datasets/coco" and run["hgpose_version"] == __version__ and run["recorded"]
    assert run["last_epoch"].endswith("UTC")


def test_a_run_without_its_own_record_says_whose_version_it_shows(run_dir):
    from hgpose.train.run_info import identity_markdown, run_identity

    identity = run_identity(run_dir)  # metrics.csv only: no config.yaml, no run_info.json
    assert not identity["recorded"] and identity["data"] is None and identity["started"] is None
    line = identity_markdown(identity)
    assert "data `unknown`" in line and "started unknown" in line and "the run did not record its own" in line


@pytest.mark.slow
def test_a_trained_run_records_its_identity(synth_dataset, tmp_path):
    from hgpose.model.hourglass import ModelConfig
    from hgpose.train.config import TrainConfig
    from hgpose.train.loop import train

    config = TrainConfig(data=str(synth_dataset), out=str(tmp_path / "run"), epochs=1, batch_size=8, workers=0,
                         progress=False, cache="off", subset=8, model=ModelConfig(depth=2, features=32,
                                                                                   input_size=64))
    run_dir = train(config)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert set(info) == {"hgpose_version", "git_commit", "started", "machine"}
    from hgpose.train.run_info import identity_markdown, run_identity

    line = identity_markdown(run_identity(run_dir))  # what write_report puts under Table 1
    assert f"data `{synth_dataset}`" in line and "did not record" not in line
