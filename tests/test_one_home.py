"""One home per decision (the house's rule): each piece of knowledge that several parts of hgpose
need is defined in exactly one module, and nothing else writes it again."""

import re
from pathlib import Path

import pytest

from hgpose.cli.train import OPTIONS

SRC = Path(__file__).resolve().parent.parent / "src" / "hgpose"
SOURCES = {p.relative_to(SRC).as_posix(): p.read_text() for p in SRC.rglob("*.py")}

# function -> the module that is its one home
HOMES = {
    "flip_permutation": "keypoints.py",
    "twin_of": "keypoints.py",
    "twin_landings": "explore/facing.py",
    "person_category_id": "keypoints.py",
    "file_sha1": "runtime/files.py",
    "check_decode_method": "model/heatmaps.py",
    "render_heatmaps": "model/heatmaps.py",
    "decode_heatmaps": "model/heatmaps.py",
    "dark_offsets": "model/heatmaps.py",
    "flip_back": "model/heatmaps.py",
    "read_run_yaml": "train/run_dir.py",
    "run_record": "train/run_dir.py",
    "checkpoint_run_record": "train/run_dir.py",
    "read_detections": "data/person_boxes.py",
    "load_boxes_csv": "data/person_boxes.py",
    "load_boxes_file": "data/person_boxes.py",
    "seed_normalizer": "evaluation/pck.py",
}

# text that only its home may contain: (pattern, home, what it is)
ONLY_IN = [
    (r"hashlib\.sha1\(", "runtime/files.py", "a file's sha1"),
    (r"\.get\(\"name\"\) == \"person\"", "keypoints.py", "which category is the person"),
    (r"^TARGET_SIGMA = ", "model/heatmaps.py", "the target sigma"),
    (r"^HEATMAP_STRIDE = ", "geometry.py", "the network's stride"),
    (r"\(\"quarter\", \"dark\"\)", "model/heatmaps.py", "the decode methods"),
    (r"^__version__ = ", "runtime/version.py", "the version"),
    (r"FLIP_PAIRS", "keypoints.py", "the flip pairs"),
]


@pytest.mark.parametrize("name, home", sorted(HOMES.items()))
def test_each_shared_function_is_defined_once(name, home):
    defined = [path for path, text in SOURCES.items() if re.search(rf"^\s*def {name}\(", text, flags=re.M)]
    assert defined == [home], f"{name} must be defined once, in {home}; found in {defined}"


@pytest.mark.parametrize("pattern, home, what", ONLY_IN)
def test_each_decision_is_written_in_its_home_only(pattern, home, what):
    found = sorted(path for path, text in SOURCES.items() if re.search(pattern, text, flags=re.M))
    assert found == [home], f"{what} ({pattern}) belongs in {home} alone; found in {found}"


def test_no_input_to_heatmap_factor_is_written_outside_its_home():
    found = [path for path, text in SOURCES.items() if re.search(r"input_size\s*//\s*4\b", text)]
    assert found == [], f"heatmap size written as input_size // 4 in {found}: use geometry.HEATMAP_STRIDE"


def test_the_cli_takes_training_defaults_from_train_config():
    assert all(len(option) == 3 for option in OPTIONS), "cli/train.OPTIONS carries a default of its own"
