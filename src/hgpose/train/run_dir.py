"""A run directory and its files: config.yaml (every option), metrics.csv, train.log, the lock, and
what --resume reads back (progress, a finished run, a moved data root).

    config.yaml      every resolved option
    metrics.csv      epoch, lr, train_loss, val_loss, val_pck, epoch_seconds (rewritten each epoch)
    checkpoints/epoch_NNN.safetensors   weights after each epoch
    best.safetensors weights of the epoch with the highest val PCK (the seed's choice)
    last.safetensors weights + optimizer + RNG + history: what --resume continues from
    train.log        the lines printed during training
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

import yaml
from tqdm import tqdm

from hgpose.data.coco import annotation_path
from hgpose.runtime.files import UserError, atomic_write_text, disk_errors, file_sha1
from hgpose.train.checkpoint import read_training_state
from hgpose.train.config import RESUMABLE_OVERRIDES, TrainConfig

RUN_CONFIG = "config.yaml"  # every option of a run, as `hgpose train` resolved them

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_pck", "epoch_seconds"]
LOCK_NAME = ".lock"


def next_run_dir(base: Path = Path("runs"), name: str = "train") -> Path:
    """runs/train, runs/train2, runs/train3, ... (the first free name)."""
    candidate, n = base / name, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{name}{n}"
    return candidate


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRIC_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


class RunLog:
    """Prints a line and appends it to train.log (rank 0 only)."""

    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, message: str) -> None:
        tqdm.write(message)
        self.record(message)

    def record(self, message: str) -> None:
        """To train.log only (for lines already shown)."""
        if self.path is not None:
            with disk_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
                f.write(message + "\n")


class Tee(io.TextIOBase):
    """Passes writes on to `stream` and keeps a copy (what data loading prints, for train.log)."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def lines(self) -> list[str]:
        # a progress bar redraws with carriage returns: keep its last state
        return [line.rsplit("\r", 1)[-1] for line in self.copy.getvalue().splitlines() if line.strip("\r ")]


def resume_command(run_dir: Path) -> str:
    return f"hgpose train --resume {shlex.quote(str(run_dir))}"


def run_record(directory: Path) -> dict:
    """A directory's config.yaml as a mapping, or {} when there is none or it cannot be read: for
    readers that only want to know what they can (a checkpoint's run, a report's identity line)."""
    config_file = Path(directory) / RUN_CONFIG
    if not config_file.is_file():
        return {}
    try:
        loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def checkpoint_run_record(checkpoint) -> dict:
    """The options of the run a checkpoint belongs to (RUN/best.safetensors or
    RUN/checkpoints/epoch_NNN.safetensors), or {} when it is not inside a run directory."""
    checkpoint = Path(checkpoint)
    for directory in (checkpoint.parent, checkpoint.parent.parent):
        if (directory / RUN_CONFIG).is_file():
            return run_record(directory)
    return {}


def read_run_yaml(run_dir: Path) -> dict:
    """A run's config.yaml as a mapping; anything else (no such directory, no config.yaml, not YAML,
    not a mapping) is a one-line error saying which."""
    run_dir = Path(run_dir)
    config_file = run_dir / RUN_CONFIG
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not config_file.is_file():
        started = " (a run stopped before it began training leaves this: start it again with --out)" \
            if (run_dir / LOCK_NAME).exists() else ""
        raise UserError(f"{run_dir}: not an hgpose run directory (no config.yaml){started}")
    try:
        loaded = yaml.safe_load(config_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file}: unreadable run config ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{config_file}: expected a mapping of training options")
    return loaded


def load_run_config(run_dir: Path) -> TrainConfig:
    """The options of a run (its config.yaml). A run killed before its first checkpoint has one too,
    and --resume starts it from epoch 1."""
    return TrainConfig.from_mapping(read_run_yaml(run_dir), Path(run_dir) / "config.yaml")


def run_progress(run_dir: Path) -> tuple[int, int]:
    """(the epoch a resume starts in, the step inside it): (1, 0) before the first checkpoint."""
    last = Path(run_dir) / "last.safetensors"
    if not last.is_file():
        return 1, 0
    state = read_training_state(last)
    return state["epoch"], state["step_in_epoch"]


def run_is_finished(run_dir: Path, config: TrainConfig | None = None) -> bool:
    config = config or load_run_config(run_dir)
    epoch, step = run_progress(run_dir)
    return epoch > config.epochs and step == 0


def annotations_sha1(config: TrainConfig) -> dict[str, str]:
    """sha1 of each annotation file the run reads: what identifies its data wherever it is mounted."""
    splits = [config.train_split] + ([config.val_split] if config.val_split else [])
    digests = {}
    for split in splits:
        digests[split] = file_sha1(annotation_path(config.data, split))
    return digests


def resume_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """The saved run config with the allowed overrides; a conflicting option is an error, except in
    a run that never finished an epoch, which then starts again with the new settings.

    --data may point elsewhere when the data moved (another mount point): allowed when its annotation
    files are byte-identical to the run's (their sha1 is in config.yaml)."""
    raw = read_run_yaml(run_dir)
    config = load_run_config(run_dir)
    saved = config.to_dict()
    overrides = dict(overrides)
    new_data = overrides.pop("data", None)
    conflicts = [
        f"{k} (run: {saved[k]!r}, given: {v!r})"
        for k, v in overrides.items()
        if k not in RESUMABLE_OVERRIDES and k in saved and saved[k] != v
    ]
    if conflicts and run_progress(run_dir)[0] > 1:
        raise UserError(f"{run_dir}: --resume with options that conflict with the run: {', '.join(conflicts)}")
    # a run that never finished an epoch takes any option: it starts again (hgpose.train.restart)
    allowed = overrides if conflicts else {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES}
    # the thread count is the one given now, else the run's recorded count (hgpose.train.machine)
    resumed = TrainConfig(**(saved | {"threads": None} | allowed))
    if new_data is not None and Path(new_data).resolve() != Path(config.data).resolve():
        recorded = raw.get("annotations_sha1")
        if not recorded:
            raise UserError(f"{run_dir}: --data {new_data} differs from the run's {config.data}, and the run "
                            "recorded no annotation fingerprint to check the move against")
        resumed.data = str(Path(new_data).resolve())
        for split, digest in annotations_sha1(resumed).items():
            if recorded.get(split) != digest:
                raise UserError(f"{annotation_path(new_data, split)}: differs from the annotations the run "
                                f"was trained on ({annotation_path(config.data, split)}); --data may only "
                                "point at the same data in another place")
    return resumed


def record_moved_data(run_dir: Path, config: TrainConfig) -> None:
    """After `--resume --data NEWPATH` (checked by resume_config), config.yaml points at the new place."""
    record = read_run_yaml(run_dir)
    if record.get("data") != config.data:
        record["data"] = str(Path(config.data).resolve())
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    """config.yaml: every option, the data root absolute (a run resumes from any directory), the root
    as typed, and the annotations' sha1 (so --resume may accept the same data at a new path)."""
    typed = config.data
    config.data = str(Path(config.data).resolve())
    if config.cache_dir:
        config.cache_dir = str(Path(config.cache_dir).resolve())
    record = {**config.to_dict(), "data_as_typed": typed, "annotations_sha1": annotations_sha1(config)}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))


def check_resumable(run_dir: Path, config: TrainConfig) -> None:
    if not (run_dir / "config.yaml").is_file():
        load_run_config(run_dir)  # raises the one-line error that says what is wrong
    epoch, step = run_progress(run_dir)
    if epoch > config.epochs and step == 0:
        raise UserError(f"{run_dir}: the run is finished ({epoch - 1} epochs); to train it further, give a "
                        f"larger --epochs: {resume_command(run_dir)} --epochs {epoch - 1 + 10}")
