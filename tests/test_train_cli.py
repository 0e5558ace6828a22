"""The train command's options: validated up front (one line, exit 2), --config files, and runs that
resume from any directory or with their data moved."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from hgpose.cli import build_parser, main
from hgpose.cli.train import build_config
from hgpose.demo import DEMO_EPOCHS, DEMO_LR, DEMO_MODEL
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from test_train import TINY_FLAGS, quick_config, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("flags, message", [
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--subset", "-3"], "--subset must be a number of instances >= 1"),
    (["--subset", "0"], "--subset must be a number of instances >= 1"),
    (["--val-fraction", "0"], "use --val-split NAME instead"),
    (["--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
])
def test_bad_options_are_one_line_before_any_work(flags, message, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "no-such-data"), "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_resume_of_a_file_and_of_a_finished_run(synth_dataset, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert main(["train", "--resume", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "the run is finished (1 epochs)" in err and "--epochs" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--no-report"]) == 0  # extending works
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [1, 2]


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def test_seed_config_equals_the_defaults_and_demo_config_equals_the_demo():
    seed = build_config(parse("--config", str(CONFIGS / "seed.yaml"), "--data", "DATA"))
    assert seed == TrainConfig(data="DATA")
    demo = build_config(parse("--config", str(CONFIGS / "demo.yaml"), "--data", "DATA"))
    assert (demo.epochs, demo.lr, demo.model) == (DEMO_EPOCHS, DEMO_LR, DEMO_MODEL)
    assert demo.workers == 0 and asdict(demo) | {"epochs": 100, "lr": 2.5e-4, "workers": 2, "model": None} == \
        asdict(TrainConfig(data="DATA")) | {"model": None}


def test_shipped_configs_are_named_without_a_path_and_a_local_file_wins(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the checkout: the names resolve inside the package
    assert build_config(parse("--config", "demo", "--data", "D")) == \
        build_config(parse("--config", str(CONFIGS / "demo.yaml"), "--data", "D"))
    assert build_config(parse("--config", "seed.yaml", "--data", "D")) == TrainConfig(data="D")
    (tmp_path / "demo").write_text("epochs: 7\n")  # a file of that name in the working directory wins
    assert build_config(parse("--config", "demo", "--data", "D")).epochs == 7
    assert main(["train", "--config", "nonesuch", "--data", "D"]) == 2
    err = capsys.readouterr().err
    assert "nonesuch: config file not found (shipped configs: demo, seed)" in err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_the_config_file_and_bad_files_are_one_line(tmp_path, capsys):
    config = build_config(parse("--config", str(CONFIGS / "demo.yaml"), "--data", "D", "--epochs", "3",
                                "--features", "64"))
    assert config.epochs == 3 and config.model.features == 64 and config.model.input_size == 64
    float_like = tmp_path / "lr.yaml"
    float_like.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert build_config(parse("--config", str(float_like), "--data", "D")).lr == 1e-3
    bad = tmp_path / "bad.yaml"
    for text, message in [("epochs: [1]", "epochs must be int"), ("epoch: 3", "unknown option(s) epoch"),
                          ("- a list", "expected a mapping"), ("epochs: 3\n  bad: : indent", "malformed YAML"),
                          ("model: {features: 3}", "features must be even")]:
        bad.write_text(text)
        assert main(["train", "--config", str(bad), "--data", "D"]) == 2
        err = capsys.readouterr().err
        assert message in err and str(bad) in err and len(err.strip().splitlines()) == 1, (text, err)


def test_a_run_records_its_data_root_absolute_and_resumes_from_anywhere(synth_dataset, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(synth_dataset, work / "data")
    monkeypatch.chdir(work)
    args = ["train", "--data", "data", "--out", "run", "--epochs", "1", "--subset", "16", "--workers", "0",
            "--cache", "off", "--no-progress", "--no-report", *TINY_FLAGS]
    assert main(args) == 0
    recorded = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert recorded["data"] == str(work / "data") and recorded["data_as_typed"] == "data"
    # from another directory
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(work / "run"), "--epochs", "2", "--no-report"]) == 0
    # the data moved (another mount point): same annotations, so --data may follow it
    moved = tmp_path / "mnt" / "coco"
    shutil.move(work / "data", moved)
    assert main(["train", "--resume", str(work / "run"), "--data", str(moved), "--epochs", "3", "--no-report"]) == 0
    assert [int(r["epoch"]) for r in read_metrics(work / "run")] == [1, 2, 3]
    assert yaml.safe_load((work / "run" / "config.yaml").read_text())["data"] == str(moved)  # for the next resume


def test_resume_with_data_whose_annotations_differ_is_refused(synth_dataset, tmp_path, capsys):
    run_dir = train(quick_config(synth_dataset, tmp_path / "run", epochs=1, subset=16))
    other = tmp_path / "other"
    shutil.copytree(synth_dataset, other)
    annotations = other / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(annotations.read_text())
    data["annotations"] = data["annotations"][:-1]
    annotations.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--data", str(other), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "differs from the annotations the run was trained on" in err and len(err.strip().splitlines()) == 1
