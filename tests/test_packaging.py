"""The installable package: `python -m build` makes an sdist and a wheel; the wheel, installed into a
fresh virtual environment, runs the commands and the Python API with nothing read from the
repository; and the version is written in one place (hgpose.runtime.version) and shows everywhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import hgpose
from hgpose.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_written_once_and_shown_by_the_cli_and_run_info(tmp_path, capsys):
    project = (REPO / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*\"", project, flags=re.M)  # no second copy of the number
    assert re.search(r'^dynamic = \["version"\]', project, flags=re.M)
    assert re.search(r'^version = \{ attr = "hgpose.runtime.version.__version__" \}', project, flags=re.M)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"hgpose {hgpose.__version__}"
    from hgpose.train.run_info import write_run_info

    info = json.loads(write_run_info(tmp_path).read_text())
    assert info["hgpose_version"] == hgpose.__version__


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` of this checkout: an sdist, and a wheel built from that sdist."""
    pytest.importorskip("build", reason="the `build` package (dev extra) is needed to build the wheel")
    out = tmp_path_factory.mktemp("dist")
    source = _tracked_copy(tmp_path_factory.mktemp("source")) or REPO
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _tracked_copy(folder: Path) -> Path | None:
    """The checkout's tracked files copied into `folder`: a build there cannot pick up files that are
    only lying around (a stale src/hgpose.egg-info lists files for the sdist, hiding a missing
    package-data line). None when this is not a git checkout."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, timeout=60)
    if listed.returncode != 0:
        return None
    for name in filter(None, listed.stdout.decode().split("\0")):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink() or (REPO / name).is_file():
            shutil.copy2(REPO / name, target, follow_symlinks=False)
    return folder


def _clean_env() -> dict:
    """No PYTHONPATH and no virtualenv of the test run leaking into the fresh environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def wheel_venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable). The heavy dependencies
    (torch, OpenCV, ...) are reused from the environment running the tests through a .pth line, the
    same effect as --system-site-packages: such a path is only appended to sys.path (its own .pth
    files, e.g. an editable hgpose, are not processed), so hgpose itself can only come from the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300,
                          env=_clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _run(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=_clean_env())


@pytest.mark.slow
def test_build_makes_an_sdist_and_a_wheel_named_with_the_version(dist):
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"hgpose-{hgpose.__version__}-py3-none-any.whl", f"hgpose-{hgpose.__version__}.tar.gz"]


@pytest.mark.slow
def test_the_installed_wheel_runs_synth_train_and_load_outside_the_repository(wheel_venv, tmp_path):
    work = tmp_path / "work"  # not the checkout: nothing can be read from the repository by accident
    work.mkdir()
    where = _run(wheel_venv, work, "python", "-c", "import hgpose; print(hgpose.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().is_relative_to(wheel_venv.resolve())

    help_ = _run(wheel_venv, work, "hgpose", "--help")
    assert help_.returncode == 0 and all(c in help_.stdout for c in ("synth", "train", "evaluate", "export"))
    version = _run(wheel_venv, work, "hgpose", "--version")
    assert version.stdout.strip() == f"hgpose {hgpose.__version__}"

    synth = _run(wheel_venv, work, "hgpose", "synth", "data", "--train-images", "12", "--val-images", "4",
                 "--image-size", "160x120")
    assert synth.returncode == 0, synth.stderr
    assert (work / "data/annotations/person_keypoints_train2017.json").is_file()

    # --config demo is read from the package data of the wheel; flags shrink it to a second's work
    train = _run(wheel_venv, work, "hgpose", "train", "--config", "demo", "--data", "data", "--out", "run",
                 "--epochs", "1", "--batch-size", "8", "--depth", "2", "--features", "32", "--no-progress",
                 "--no-report", "--val-split", "val2017")
    assert train.returncode == 0, train.stderr[-3000:]
    assert (work / "run/best.safetensors").is_file()
    info = json.loads((work / "run/run_info.json").read_text())
    assert info["hgpose_version"] == hgpose.__version__

    load = _run(wheel_venv, work, "python", "-c",
                "import numpy as np, hgpose\n"
                "predictor = hgpose.load('run/best.safetensors')\n"
                "points = predictor.predict(np.zeros((120, 160, 3), np.uint8))\n"
                "print(points.shape, hgpose.__file__)")
    assert load.returncode == 0, load.stderr[-3000:]
    shape, file = load.stdout.split(") ")
    assert shape + ")" == "(1, 17, 3)" and Path(file.strip()).resolve().is_relative_to(wheel_venv.resolve())
