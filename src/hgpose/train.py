"""Training with the seed's protocol (Section 1.1).

Batch 16, MSE loss, RMSProp at 2.5e-4, no augmentation. After every epoch the train loss, val loss
and val PCK are recorded and a checkpoint is saved; the first time the best val PCK has not improved
for 5 epochs the learning rate drops x1/5, once and for good. No automatic early stopping.

Run directory:
    config.yaml      every resolved option
    metrics.csv      epoch, lr, train_loss, val_loss, val_pck, epoch_seconds (rewritten each epoch)
    checkpoints/epoch_NNN.safetensors   weights after each epoch
    best.safetensors weights of the epoch with the highest val PCK (the seed's choice)
    last.safetensors weights + optimizer + RNG + history: what --resume continues from
    train.log        the lines printed during training
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from hgpose import distributed as dist
from hgpose.allocator import keep_freed_memory
from hgpose.augment import AugmentConfig, BatchAugment
from hgpose.checkpoint import load_training_checkpoint, read_training_state, save_training_checkpoint
from hgpose.compile_modes import begin_step, compile_mode, compile_step_model
from hgpose.data.coco import annotation_path, build_splits
from hgpose.data.dataset import PersonDataset
from hgpose.data.image_report import first_problems, image_report
from hgpose.data.loader import device_batches, make_loader
from hgpose.data.targets import heatmap_loss, render_heatmaps
from hgpose.evaluate import infer, pck, seed_normalizer
from hgpose.fileio import UserError, atomic_write_text, disk_errors, exclusive_lock, sweep_temp_files
from hgpose.memory_format import preferred_memory_format
from hgpose.model import ModelConfig, build_model, save_model, to_model_input
from hgpose.precision import PRECISIONS, autocast, resolve_precision
from hgpose.progress import progress_bar
from hgpose.run_info import write_run_info

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_pck", "epoch_seconds"]
# options that may differ on --resume without changing the run's result
RESUMABLE_OVERRIDES = {"epochs", "device", "workers", "compile", "progress", "cache", "cache_dir"}
# written to config.yaml beside the options, for the record (not options: --config ignores them)
RECORDED_KEYS = ("data_as_typed", "annotations_sha1")
LOCK_NAME = ".lock"


@dataclass
class TrainConfig:
    data: str
    out: str | None = None
    epochs: int = 100
    batch_size: int = 16  # global: split across processes under torchrun
    lr: float = 2.5e-4
    lr_patience: int = 5
    lr_factor: float = 0.2
    seed: int = 0
    precision: str = "auto"  # bf16 where the hardware has it (no accuracy cost on the demo), else fp32
    device: str = "auto"
    workers: int = 2
    compile: str = "off"  # off, default (torch.compile) or reduce-overhead (CUDA graphs); see compile_modes
    sync_bn: bool = False
    subset: int | None = None  # a seeded random N training (and at most N validation) instances
    train_split: str = "train2017"
    val_split: str | None = None  # None: hold out val_fraction of train2017's images
    val_fraction: float = 0.05
    cache: str = "auto"
    cache_dir: str | None = None  # where `hgpose prepare --cache-dir` put the caches
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # off: the seed's protocol

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if not isinstance(self.augment, AugmentConfig):  # the config.yaml block; old runs have none
            self.augment = AugmentConfig.from_dict(self.augment)
        self.compile = compile_mode(self.compile)  # runs saved with compile: true/false still load
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "lr_patience"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 < self.lr_factor <= 1):
            raise UserError("--lr must be > 0 and --lr-factor in (0, 1]")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0 (0 loads data in the training process), got {self.workers}")
        if self.subset is not None and self.subset < 1:
            raise UserError(f"--subset must be a number of instances >= 1 (leave it out for all), got {self.subset}")
        if self.val_split is None and not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in (0, 1), got {self.val_fraction}; to validate on a "
                            "separate annotation file use --val-split NAME instead")
        if self.cache not in ("auto", "off"):
            raise UserError(f"--cache must be auto or off, got {self.cache!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "model": asdict(self.model)}

    @classmethod
    def from_mapping(cls, values: dict, source) -> TrainConfig:
        """A config from YAML keys (a run's config.yaml or a --config file); a key that is not an
        option or a value of the wrong type is a one-line error naming `source`."""
        if not isinstance(values, dict):
            raise UserError(f"{source}: expected a mapping of training options")
        values = {k: v for k, v in values.items() if k not in RECORDED_KEYS}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"{source}: unknown option(s) {', '.join(unknown)} (known: {', '.join(known)})")
        defaults = cls(data="")
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"], source)
        for key, value in list(values.items()):
            if isinstance(getattr(defaults, key), float) and isinstance(value, str):
                with contextlib.suppress(ValueError):  # YAML reads 1e-3 (no dot) as a string
                    values[key] = value = float(value)
            default = getattr(defaults, key)
            kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(type(default))
            if key in ("subset", "val_split", "cache_dir", "out", "data"):
                kinds = (int,) if key == "subset" else (str,)
            if kinds and value is not None and (not isinstance(value, kinds) or
                                                (isinstance(value, bool) and bool not in kinds)):
                raise UserError(f"{source}: {key} must be {kinds[-1].__name__}, got {value!r}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: {exc}") from None


@dataclass
class PlateauDrop:
    """The seed's LR rule: one permanent drop the first time best PCK stalls for `patience` epochs."""

    patience: int = 5
    factor: float = 0.2
    best: float = -math.inf
    epochs_since_best: int = 0
    dropped_at: int | None = None

    def update(self, epoch: int, val_pck: float) -> bool:
        """Record an epoch's PCK; True when the LR must drop now (for the epochs after this one)."""
        if val_pck > self.best:
            self.best, self.epochs_since_best = val_pck, 0
        else:
            self.epochs_since_best += 1
        if self.dropped_at is None and self.epochs_since_best >= self.patience:
            self.dropped_at = epoch
            return True
        return False


# --- run directory -------------------------------------------------------------------------------


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


class _Tee(io.TextIOBase):
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


# --- resume -----------------------------------------------------------------------------------


def _read_run_yaml(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not config_file.is_file():
        started = " (a run stopped before it began training leaves this: start it again with --out)" \
            if (run_dir / LOCK_NAME).exists() else ""
        raise UserError(f"{run_dir}: not an hgpose run directory (no config.yaml){started}")
    try:
        return yaml.safe_load(config_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file}: unreadable run config ({str(exc).splitlines()[0]})") from None


def load_run_config(run_dir: Path) -> TrainConfig:
    """The options of a run (its config.yaml). A run killed before its first checkpoint has one too,
    and --resume starts it from epoch 1."""
    return TrainConfig.from_mapping(_read_run_yaml(run_dir), Path(run_dir) / "config.yaml")


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
        path = annotation_path(config.data, split)
        digest = hashlib.sha1()
        with disk_errors(path), open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        digests[split] = digest.hexdigest()
    return digests


def resume_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """The saved run config with the allowed overrides; a conflicting option is an error.

    --data may point elsewhere when the data moved (another mount point): allowed when its annotation
    files are byte-identical to the run's (their sha1 is in config.yaml)."""
    raw = _read_run_yaml(run_dir)
    config = load_run_config(run_dir)
    saved = config.to_dict()
    overrides = dict(overrides)
    new_data = overrides.pop("data", None)
    conflicts = [
        f"{k} (run: {saved[k]!r}, given: {v!r})"
        for k, v in overrides.items()
        if k not in RESUMABLE_OVERRIDES and k in saved and saved[k] != v
    ]
    if conflicts:
        raise UserError(f"{run_dir}: --resume with options that conflict with the run: {', '.join(conflicts)}")
    resumed = TrainConfig(**(saved | {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES}))
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


def _seeded_subset(index, n: int | None, seed: int):
    if n is None or n >= len(index):
        return index
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(index), generator=generator)[:n].sort().values.numpy()
    return index.subset(keep)


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (what `timeout` and job schedulers send) sets a flag; the loop
    finishes its step, saves and exits. A second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.requested = True

        self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def train_step(model, optimizer, batch, device, precision: str, heatmap_size: int, channels_last: bool = True,
               augment: BatchAugment | None = None):
    """One optimisation step; returns the loss as a device tensor (no host sync). `augment` (training
    only, never validation) warps the batch's pixels and keypoints on the device first."""
    images = to_model_input(batch["image"].to(device, non_blocking=True))
    keypoints = batch["keypoints"].to(device, non_blocking=True)
    visibility = batch["visibility"].to(device, non_blocking=True)
    if augment is not None:
        images, keypoints, visibility = augment(images, keypoints, visibility, batch["index"])
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    valid = batch["valid"].to(device, non_blocking=True)
    targets, _ = render_heatmaps(keypoints, visibility, heatmap_size)
    with autocast(device, precision):
        outputs = model(images, all_stacks=True)  # (N, S, K, H, W): intermediate supervision when S > 1
    loss = heatmap_loss(outputs, targets, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()



def train(config: TrainConfig, resume: Path | None = None, *, say_resume: bool = True) -> Path:
    """Train (or resume) a run; returns the run directory (also when stopped by Ctrl-C or SIGTERM:
    `run_is_finished` tells the two apart). say_resume=False leaves the resume command out of the
    interrupt message, for a caller (the demo) that prints its own: a user should see one command."""
    keep_freed_memory()
    ctx = dist.setup(config.device)
    is_main = ctx.rank == 0
    run_dir = Path(resume) if resume else Path(config.out) if config.out else next_run_dir()
    if resume:
        _check_resumable(run_dir, config)
    elif (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
    if not is_main:  # rank 0 holds the run's lock and writes its files; the others wait for its word
        if ctx.any(False):
            raise UserError(f"{run_dir}: not started: rank 0 could not take the run directory (its error says why)")
        return _train(config, run_dir, bool(resume), ctx, say_resume)
    busy = (f"{run_dir}: another hgpose train is writing to this run directory now (it holds "
            f"{run_dir / LOCK_NAME}); wait for it to end, or use another --out")
    with contextlib.ExitStack() as held:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(run_dir / LOCK_NAME, busy))
            if not resume and (run_dir / "config.yaml").exists():  # written by a run that just ended
                raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
            for folder in (run_dir, run_dir / "checkpoints"):
                if folder.is_dir():
                    sweep_temp_files(folder)  # what a save killed half-way left behind
        except BaseException:
            ctx.any(True)  # under torchrun the other ranks stop too, instead of waiting in a collective
            raise
        ctx.any(False)
        return _train(config, run_dir, bool(resume), ctx, say_resume)


def _check_resumable(run_dir: Path, config: TrainConfig) -> None:
    if not (run_dir / "config.yaml").is_file():
        load_run_config(run_dir)  # raises the one-line error that says what is wrong
    epoch, step = run_progress(run_dir)
    if epoch > config.epochs and step == 0:
        raise UserError(f"{run_dir}: the run is finished ({epoch - 1} epochs); to train it further, give a "
                        f"larger --epochs: {resume_command(run_dir)} --epochs {epoch - 1 + 10}")


def _load_data(config: TrainConfig, log, is_main: bool):
    """The training and validation sets; what loading says goes to the console and train.log."""
    messages = _Tee(sys.stderr)
    with contextlib.redirect_stderr(messages):
        splits = build_splits(
            config.data, train_split=config.train_split, val_split=config.val_split,
            val_fraction=config.val_fraction, seed=config.seed, verbose=is_main,
        )
        train_set, val_set = (
            PersonDataset(_seeded_subset(splits[name], config.subset, config.seed + offset), config.model.input_size,
                          cache=config.cache, cache_dir=config.cache_dir)
            for name, offset in (("train", 0), ("val", 1))
        )
    for line in messages.lines():
        log.record(line)
    if len(train_set) == 0 or len(val_set) == 0:
        raise UserError(f"{config.data}: empty training or validation set ({len(train_set)} / {len(val_set)})")
    return train_set, val_set


def _report_decode_failures(dataset, invalid_positions, known_bad: set, log, epoch: int) -> None:
    """The training samples whose image failed to decode in the first epoch read, beyond those whose
    header the start already reported: count and the first few files with why."""
    index = dataset.index
    positions = [p for p in sorted(set(int(i) for i in invalid_positions))
                 if index.file_names[index.image_index[p]] not in known_bad]
    if not positions:
        return
    listed = "; ".join(f"{name}: {why}" for name, why in first_problems(dataset, positions).items())
    log(f"{len(positions)} training samples skipped in epoch {epoch}: their images failed to decode "
        f"(skipped every epoch), e.g. {listed}")


def _lone_last_sample(samples: int, world_size: int, per_rank_batch: int, model: ModelConfig) -> bool:
    """Whether an epoch would end in a batch of one sample while the hourglass's innermost maps are
    1x1: batch norm then has a single value per channel and cannot train (PyTorch raises)."""
    per_rank = -(-samples // world_size)
    return model.heatmap_size >> model.depth == 1 and per_rank_batch > 1 and per_rank % per_rank_batch == 1


def _non_finite_tensor(model) -> str | None:
    """The first parameter or buffer (BN running stats included) holding NaN or inf, or None."""
    floating = {k: v for k, v in getattr(model, "module", model).state_dict().items() if v.is_floating_point()}
    finite = torch.stack([torch.isfinite(v).all() for v in floating.values()]).cpu()  # one host sync
    bad = [k for k, ok in zip(floating, finite.tolist()) if not ok]
    return bad[0] if bad else None


def _train(config: TrainConfig, run_dir: Path, resume: bool, ctx, say_resume: bool = True) -> Path:
    device, is_main = ctx.device, ctx.rank == 0
    precision = resolve_precision(config.precision, device)
    if config.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by {ctx.world_size} processes")
    log = RunLog(run_dir / "train.log" if is_main else None)
    torch.manual_seed(config.seed)  # any random op of the run is reproducible; --resume restores the state
    layout = preferred_memory_format(device, precision)  # measured per device: hgpose/memory_format.py
    model = build_model(config.model, seed=config.seed).to(device).to(memory_format=layout)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr)
    schedule = PlateauDrop(config.lr_patience, config.lr_factor)
    history: list[dict] = []
    start_epoch, start_step, carried = 1, 0, {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
    resumed = resume and (run_dir / "last.safetensors").is_file()
    if resumed:  # before the data: a damaged checkpoint is one line at once, not after minutes of loading
        state = load_training_checkpoint(run_dir / "last.safetensors", model, optimizer)
        history, schedule = state["history"], PlateauDrop(**state["schedule"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        carried = state["partial"]

    train_set, val_set = _load_data(config, log, is_main)
    known_bad: set[str] = set()  # unusable training images reported at the start
    if is_main:
        for what, dataset in (("training", train_set), ("validation", val_set)):
            images = image_report(dataset, progress=config.progress)
            for line in images.lines(what):
                log(line)
            if dataset is train_set:
                known_bad = set(images.problems)
    if is_main:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if resume and is_main:
        _record_moved_data(run_dir, config)
    if resumed:
        if is_main:
            write_metrics_csv(run_dir / "metrics.csv", history)  # drop any row written after `last`
            log(f"resuming {run_dir} at epoch {start_epoch}" + (f", step {start_step}" if start_step else ""))
    elif is_main:
        if resume:
            log(f"resuming {run_dir}: it stopped before its first checkpoint, so it starts at epoch 1")
        else:
            _write_run_config(run_dir, config)
        if not (run_dir / "run_info.json").is_file():
            write_run_info(run_dir)  # hgpose version and commit, for the report
        log(f"training {run_dir}: {len(train_set)} train / {len(val_set)} val instances, "
            f"{'cache' if train_set.using_cache else 'raw JPEG'} data, device {device}, "
            f"{ctx.world_size} process(es), precision {precision}, {config.augment.describe()}")

    if config.sync_bn and ctx.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model = ctx.wrap(model)
    # about 1.5 min of compilation on a 2-core CPU before the first step
    train_model, uses_graphs = compile_step_model(train_model, config.compile, device)
    per_rank_batch = config.batch_size // ctx.world_size
    heatmap_size = config.model.heatmap_size
    normalizer = seed_normalizer(heatmap_size)
    drop_last = _lone_last_sample(len(train_set), ctx.world_size, per_rank_batch, config.model)
    if drop_last and is_main and start_epoch == 1 and start_step == 0:
        log("the last batch of every epoch would hold one sample, which batch norm cannot train on at this "
            "model's 1x1 bottleneck: that sample is left out of each epoch")

    def save_last(epoch: int, step_in_epoch: int, partial: dict) -> None:
        if is_main:
            save_training_checkpoint(run_dir / "last.safetensors", model, optimizer, {
                "epoch": epoch, "step_in_epoch": step_in_epoch, "partial": partial,
                "schedule": asdict(schedule), "history": history,
            })

    def stop(reason: str, epoch: int, hint: str = ""):
        """A run that cannot go on: one line, and the checkpoints of earlier epochs stay as they are."""
        if is_main:
            log(f"{reason} in epoch {epoch}: stopping; the checkpoints of earlier epochs in {run_dir} are intact")
        dist.cleanup()
        raise UserError(f"{run_dir}: {reason} in epoch {epoch}{hint}")

    with _StopRequest() as stop_request:
        for epoch in range(start_epoch, config.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            skip = start_step if epoch == start_epoch else 0
            loader = make_loader(train_set, per_rank_batch, shuffle=True, seed=config.seed, epoch=epoch,
                                 workers=config.workers, device=device, drop_last=drop_last,
                                 rank=ctx.rank, world_size=ctx.world_size, start=skip * per_rank_batch)
            augment = BatchAugment(config.augment, config.seed, epoch, heatmap_size) if config.augment.enabled else None
            loss_sum = torch.tensor(carried["loss_sum"] if skip else 0.0, dtype=torch.float64, device=device)
            samples = carried["samples"] if skip else 0
            seconds_before = carried["seconds"] if skip else 0.0
            started = time.perf_counter()
            train_model.train()
            steps_in_epoch = skip + len(loader)
            bar = progress_bar(total=steps_in_epoch, initial=skip, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                       disable=not (is_main and config.progress), dynamic_ncols=True, leave=False)
            step = skip
            images_done = 0
            invalid_seen: list[int] = []
            for batch in device_batches(loader, device):  # on CUDA: the next copy overlaps this step
                begin_step(uses_graphs)
                loss = train_step(train_model, optimizer, batch, device, precision, heatmap_size,
                                  channels_last=layout == torch.channels_last, augment=augment)
                n = int(batch["valid"].sum())
                if n < len(batch["valid"]):
                    invalid_seen += batch["index"][~batch["valid"]].tolist()
                loss_sum += loss.double() * n
                samples += n
                images_done += len(batch["valid"])
                step += 1
                bar.update(1)
                if step % 20 == 0 or step == steps_in_epoch:  # a host sync every 20 steps, not every step
                    running = loss_sum.item() / max(samples, 1)
                    if not math.isfinite(running):
                        stop(NON_FINITE_LOSS, epoch, LOWER_LR_HINT)
                    rate = images_done * ctx.world_size / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{running:.3e}", img_s=f"{rate:.1f}")
                if stop_request.requested and ctx.world_size == 1 and step < steps_in_epoch:
                    break  # under torchrun the ranks stop together at the end of the epoch instead
            bar.close()
            if stop_request.requested and ctx.world_size == 1 and step < steps_in_epoch:
                partial = {"loss_sum": float(loss_sum.item()), "samples": samples,
                           "seconds": seconds_before + time.perf_counter() - started}
                save_last(epoch, step, partial)
                if is_main:
                    log(f"interrupted at epoch {epoch}, step {step}/{steps_in_epoch}"
                        + (f"; resume with:\n  {resume_command(run_dir)}" if say_resume else "; saved"))
                dist.cleanup()
                return run_dir

            if is_main and epoch == start_epoch and not train_set.using_cache:
                _report_decode_failures(train_set, invalid_seen, known_bad, log, epoch)
            total_loss, total_samples = ctx.all_reduce_sum(loss_sum, samples)
            if total_samples == 0:
                stop(f"no readable training sample in {config.data}", epoch)
            train_loss = total_loss / total_samples
            if not math.isfinite(train_loss):
                stop(NON_FINITE_LOSS, epoch, LOWER_LR_HINT)
            bad_tensor = _non_finite_tensor(model)
            if bad_tensor:
                stop(f"the model diverged: {bad_tensor} holds NaN or infinite values", epoch, LOWER_LR_HINT)
            val_loader = make_loader(val_set, per_rank_batch * 2, shuffle=False, workers=config.workers,
                                     device=device, rank=ctx.rank, world_size=ctx.world_size)
            result = infer(model, val_loader, device=device, precision=precision, progress=False)
            val_pck = pck(result.coords, result.gt, result.visibility, normalizer).overall
            if not (math.isfinite(result.loss) and math.isfinite(val_pck)):
                stop(f"validation gave a non-finite result (val loss {result.loss}, val PCK {val_pck}; "
                     f"{int((~result.valid).sum())} of {len(result.valid)} val samples unreadable)", epoch)
            row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": result.loss,
                   "val_pck": val_pck, "epoch_seconds": seconds_before + time.perf_counter() - started}
            history.append(row)
            improved = val_pck > schedule.best
            dropped = schedule.update(epoch, val_pck)
            if dropped:
                for group in optimizer.param_groups:
                    group["lr"] *= config.lr_factor
            if is_main:
                save_model(model, run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors")
                if improved:
                    save_model(model, run_dir / "best.safetensors")
                save_last(epoch + 1, 0, {"loss_sum": 0.0, "samples": 0, "seconds": 0.0})
                write_metrics_csv(run_dir / "metrics.csv", history)
                skipped = f", {int((~result.valid).sum())} unreadable val samples skipped" \
                    if (~result.valid).any() else ""
                log(f"epoch {epoch:3d}  lr {lr:.2e}  train_loss {train_loss:.4e}  val_loss {result.loss:.4e}  "
                    f"val_pck {val_pck:.4f}{' *' if improved else ''}  {row['epoch_seconds']:.1f}s{skipped}")
                if dropped:
                    log(f"val PCK has not improved for {config.lr_patience} epochs: learning rate x{config.lr_factor}"
                        f" from epoch {epoch + 1} on (dropped after epoch {epoch}, once)")
            if ctx.any(stop_request.requested):
                if is_main and epoch < config.epochs:
                    log(f"interrupted after epoch {epoch}"
                        + (f"; resume with:\n  {resume_command(run_dir)}" if say_resume else "; saved"))
                    dist.cleanup()
                    return run_dir
                if epoch < config.epochs:
                    dist.cleanup()
                    return run_dir
    if is_main:
        best = max(history, key=lambda r: r["val_pck"])
        log(f"done: best val PCK {best['val_pck']:.4f} at epoch {best['epoch']} -> {run_dir / 'best.safetensors'}")
    dist.cleanup()
    return run_dir


NON_FINITE_LOSS = "training loss became NaN or infinite"
LOWER_LR_HINT = " (try a lower --lr or --precision fp32)"


def _record_moved_data(run_dir: Path, config: TrainConfig) -> None:
    """After `--resume --data NEWPATH` (checked by resume_config), config.yaml points at the new place."""
    record = _read_run_yaml(run_dir)
    if record.get("data") != config.data:
        record["data"] = str(Path(config.data).resolve())
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))


def _write_run_config(run_dir: Path, config: TrainConfig) -> None:
    """config.yaml: every option, the data root absolute (a run resumes from any directory), the root
    as typed, and the annotations' sha1 (so --resume may accept the same data at a new path)."""
    typed = config.data
    config.data = str(Path(config.data).resolve())
    if config.cache_dir:
        config.cache_dir = str(Path(config.cache_dir).resolve())
    record = {**config.to_dict(), "data_as_typed": typed, "annotations_sha1": annotations_sha1(config)}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(record, sort_keys=False))
