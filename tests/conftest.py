"""Shared fixtures: a small generated COCO-format dataset, and a builder for hand-made ones."""

from __future__ import annotations

import json
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
# the Ctrl-C tests' child processes would then never see their SIGINT. Give them the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SYNTH_TRAIN_IMAGES = 24
SYNTH_VAL_IMAGES = 8
SYNTH_IMAGE_SIZE = (160, 120)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: a second thread costs more than it gains, badly so on a loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """A generated dataset (24 train, 8 val images of 160x120, seed 0), made once per session.
    Treat it as read-only: tests that write caches should pass their own cache_dir."""
    from hgpose.synth import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, SYNTH_TRAIN_IMAGES, SYNTH_VAL_IMAGES, image_size=SYNTH_IMAGE_SIZE, seed=0,
                     progress=False)
    return root


def default_keypoints(bbox) -> list[float]:
    """17 labelled (v=2) keypoints spread over the inside of a bbox, as 51 COCO numbers."""
    x, y, w, h = bbox
    out = []
    for k in range(17):
        out += [x + w * (0.2 + 0.6 * (k % 4) / 3), y + h * (0.1 + 0.8 * (k // 4) / 4), 2]
    return out


class TinyCoco:
    """Builds a COCO-format dataset by hand under `root`: add images and people, then write(split)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._pixels: dict[int, np.ndarray | None] = {}
        self._next_ann = 1

    def add_image(self, width: int = 160, height: int = 120, file_name: str | None = None,
                  pixels: np.ndarray | None = None, write: bool = True, image_id: int | None = None) -> int:
        """An image entry; its JPEG is written by write() (random texture unless pixels is given)."""
        image_id = image_id if image_id is not None else len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name or f"{image_id:012d}.jpg",
                            "width": width, "height": height})
        if write:
            self._pixels[image_id] = pixels
        return image_id

    def add_person(self, image_id: int, bbox=(40.0, 20.0, 40.0, 80.0), keypoints=None, **fields) -> int:
        """A person annotation; keypoints default to 17 visible points inside the bbox."""
        keypoints = list(keypoints) if keypoints is not None else default_keypoints(bbox)
        ann = {
            "id": self._next_ann, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": list(bbox), "area": float(bbox[2] * bbox[3]),
            "num_keypoints": sum(1 for v in keypoints[2::3] if v and v > 0), "keypoints": keypoints,
        }
        ann.update(fields)
        self.annotations.append(ann)
        self._next_ann += 1
        return ann["id"]

    def write(self, split: str = "train2017", categories=None, data: dict | None = None) -> Path:
        """Write annotations/person_keypoints_<split>.json and the JPEGs; returns the root."""
        from hgpose.keypoints import PERSON_CATEGORY

        (self.root / "annotations").mkdir(parents=True, exist_ok=True)
        (self.root / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for image in self.images:
            if image["id"] not in self._pixels:
                continue
            pixels = self._pixels[image["id"]]
            if pixels is None:
                pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            path = self.root / split / image["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if data is None:
            data = {"info": {"description": "tiny test set"}, "images": self.images,
                    "annotations": self.annotations,
                    "categories": categories if categories is not None else [PERSON_CATEGORY]}
        self.annotation_file(split).write_text(json.dumps(data))
        return self.root

    def annotation_file(self, split: str = "train2017") -> Path:
        return self.root / "annotations" / f"person_keypoints_{split}.json"


@pytest.fixture
def tiny_coco(tmp_path) -> TinyCoco:
    """A TinyCoco builder rooted at a fresh tmp_path / "coco"."""
    return TinyCoco(tmp_path / "coco")


@pytest.fixture(scope="session")
def reference_run(synth_dataset, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch training run (batch 8, test_train's tiny model) that interrupted runs
    must equal bit for bit; shared by the fault tests of test_train and test_run_faults."""
    import subprocess

    from test_train import start_training

    out = tmp_path_factory.mktemp("reference") / "run"
    assert start_training(synth_dataset, out, 8, stdout=subprocess.DEVNULL).wait() == 0
    return out


@contextmanager
def mounted_tmpfs(where: Path, size: str):
    """A real tmpfs of `size` (e.g. "1m") mounted at `where`, unmounted afterwards; skips the test where
    mounting is not allowed. The full-disk tests fill it."""
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def random_jpeg(path: Path, seed: int = 0, size=(100, 80)) -> Path:
    """A real JPEG of random pixels (height, width = size) at `path`, folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model saved as a checkpoint (depth 2, 32 features, 64 px input)."""
    from hgpose.model.hourglass import ModelConfig, build_model
    from hgpose.model.weights import save_model

    return save_model(build_model(ModelConfig(depth=2, features=32, input_size=64)),
                      tmp_path_factory.mktemp("tiny") / "tiny.safetensors")
