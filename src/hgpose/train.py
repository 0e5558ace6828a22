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

import csv
import io
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from hgpose import distributed as dist
from hgpose.allocator import keep_freed_memory
from hgpose.checkpoint import load_training_checkpoint, save_training_checkpoint
from hgpose.data.coco import build_splits
from hgpose.data.dataset import PersonDataset
from hgpose.data.loader import make_loader
from hgpose.data.targets import heatmap_loss, render_heatmaps
from hgpose.evaluate import infer, pck, seed_normalizer
from hgpose.fileio import UserError, atomic_write_text
from hgpose.model import ModelConfig, build_model, save_model, to_model_input
from hgpose.precision import PRECISIONS, autocast, resolve_precision
from hgpose.progress import progress_bar
from hgpose.run_info import write_run_info

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_pck", "epoch_seconds"]
# options that may differ on --resume without changing the run's result
RESUMABLE_OVERRIDES = {"epochs", "device", "workers", "compile", "progress", "cache", "cache_dir"}


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
    compile: bool = False
    sync_bn: bool = False
    subset: int | None = None  # a seeded random N training (and at most N validation) instances
    train_split: str = "train2017"
    val_split: str | None = None  # None: hold out val_fraction of train2017's images
    val_fraction: float = 0.05
    cache: str = "auto"
    cache_dir: str | None = None  # where `hgpose prepare --cache-dir` put the caches
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "lr_patience"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 < self.lr_factor <= 1):
            raise UserError("--lr must be > 0 and --lr-factor in (0, 1]")

    def to_dict(self) -> dict:
        return {**asdict(self), "model": asdict(self.model)}


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
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(message + "\n")


# --- resume -----------------------------------------------------------------------------------


def load_run_config(run_dir: Path) -> TrainConfig:
    config_file = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    if not config_file.is_file() or not (run_dir / "last.safetensors").is_file():
        raise UserError(f"{run_dir}: not an hgpose run directory (needs config.yaml and last.safetensors)")
    try:
        return TrainConfig(**yaml.safe_load(config_file.read_text()))
    except (yaml.YAMLError, TypeError, ValueError) as exc:
        raise UserError(f"{config_file}: unreadable run config ({exc})") from None


def resume_config(run_dir: Path, overrides: dict) -> TrainConfig:
    """The saved run config with the allowed overrides; a conflicting option is an error."""
    config = load_run_config(run_dir)
    saved = config.to_dict()
    conflicts = [
        f"{k} (run: {saved[k]!r}, given: {v!r})"
        for k, v in overrides.items()
        if k not in RESUMABLE_OVERRIDES and k in saved and saved[k] != v
    ]
    if conflicts:
        raise UserError(f"{run_dir}: --resume with options that conflict with the run: {', '.join(conflicts)}")
    return TrainConfig(**(saved | {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES}))


# --- the loop ---------------------------------------------------------------------------------


def _seeded_subset(index, n: int | None, seed: int):
    if n is None or n >= len(index):
        return index
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(index), generator=generator)[:n].sort().values.numpy()
    return index.subset(keep)


class _StopRequest:
    """Ctrl-C (SIGINT) sets a flag; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.requested = True

        self._previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


def train_step(model, optimizer, batch, device, precision: str, heatmap_size: int, channels_last: bool = True):
    """One optimisation step; returns the loss as a device tensor (no host sync)."""
    images = to_model_input(batch["image"].to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    keypoints = batch["keypoints"].to(device, non_blocking=True)
    visibility = batch["visibility"].to(device, non_blocking=True)
    valid = batch["valid"].to(device, non_blocking=True)
    targets, _ = render_heatmaps(keypoints, visibility, heatmap_size)
    with autocast(device, precision):
        outputs = model(images, all_stacks=True)  # (N, S, K, H, W): intermediate supervision when S > 1
    loss = heatmap_loss(outputs, targets, valid)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(config: TrainConfig, resume: Path | None = None) -> Path:
    """Train (or resume) a run; returns the run directory."""
    keep_freed_memory()
    ctx = dist.setup(config.device)
    device, is_main = ctx.device, ctx.rank == 0
    precision = resolve_precision(config.precision, device)
    if config.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by {ctx.world_size} processes")
    run_dir = Path(resume) if resume else Path(config.out) if config.out else next_run_dir()
    if not resume and (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")

    splits = build_splits(
        config.data, train_split=config.train_split, val_split=config.val_split,
        val_fraction=config.val_fraction, seed=config.seed, verbose=is_main,
    )
    train_set, val_set = (
        PersonDataset(_seeded_subset(splits[name], config.subset, config.seed + offset), config.model.input_size,
                      cache=config.cache, cache_dir=config.cache_dir)
        for name, offset in (("train", 0), ("val", 1))
    )
    if len(train_set) == 0 or len(val_set) == 0:
        raise UserError(f"{config.data}: empty training or validation set ({len(train_set)} / {len(val_set)})")

    torch.manual_seed(config.seed)  # any random op of the run is reproducible; --resume restores the state
    model = build_model(config.model, seed=config.seed).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr)
    schedule = PlateauDrop(config.lr_patience, config.lr_factor)
    history: list[dict] = []
    start_epoch, start_step, carried = 1, 0, {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}

    log = RunLog(run_dir / "train.log" if is_main else None)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if resume:
        state = load_training_checkpoint(run_dir / "last.safetensors", model, optimizer)
        history, schedule = state["history"], PlateauDrop(**state["schedule"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        carried = state["partial"]
        if is_main:
            write_metrics_csv(run_dir / "metrics.csv", history)  # drop any row written after `last`
            log(f"resuming {run_dir} at epoch {start_epoch}" + (f", step {start_step}" if start_step else ""))
    elif is_main:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        write_run_info(run_dir)  # hgpose version and commit, for the report
        log(f"training {run_dir}: {len(train_set)} train / {len(val_set)} val instances, "
            f"{'cache' if train_set.using_cache else 'raw JPEG'} data, device {device}, "
            f"{ctx.world_size} process(es), precision {precision}")

    if config.sync_bn and ctx.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model = ctx.wrap(model)
    if config.compile:  # about 1.5 min of compilation on a 2-core CPU before the first step
        train_model = torch.compile(train_model)
    per_rank_batch = config.batch_size // ctx.world_size
    heatmap_size = config.model.heatmap_size
    normalizer = seed_normalizer(heatmap_size)

    def save_last(epoch: int, step_in_epoch: int, partial: dict) -> None:
        if is_main:
            save_training_checkpoint(run_dir / "last.safetensors", model, optimizer, {
                "epoch": epoch, "step_in_epoch": step_in_epoch, "partial": partial,
                "schedule": asdict(schedule), "history": history,
            })

    with _StopRequest() as stop:
        for epoch in range(start_epoch, config.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            skip = start_step if epoch == start_epoch else 0
            loader = make_loader(train_set, per_rank_batch, shuffle=True, seed=config.seed, epoch=epoch,
                                 workers=config.workers, device=device, drop_last=False,
                                 rank=ctx.rank, world_size=ctx.world_size, start=skip * per_rank_batch)
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
            for batch in loader:
                loss = train_step(train_model, optimizer, batch, device, precision, heatmap_size)
                n = int(batch["valid"].sum())
                loss_sum += loss.double() * n
                samples += n
                images_done += len(batch["valid"])
                step += 1
                bar.update(1)
                if step % 20 == 0 or step == steps_in_epoch:  # a host sync every 20 steps, not every step
                    running = loss_sum.item() / max(samples, 1)
                    if not math.isfinite(running):
                        _stop_on_nan(log, run_dir, epoch)
                    rate = images_done * ctx.world_size / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{running:.3e}", img_s=f"{rate:.1f}")
                if stop.requested and ctx.world_size == 1 and step < steps_in_epoch:
                    break  # under torchrun the ranks stop together at the end of the epoch instead
            bar.close()
            if stop.requested and ctx.world_size == 1 and step < steps_in_epoch:
                partial = {"loss_sum": float(loss_sum.item()), "samples": samples,
                           "seconds": seconds_before + time.perf_counter() - started}
                save_last(epoch, step, partial)
                if is_main:
                    log(f"interrupted at epoch {epoch}, step {step}/{steps_in_epoch}; resume with:\n"
                        f"  hgpose train --resume {run_dir}")
                dist.cleanup()
                return run_dir

            total_loss, total_samples = ctx.all_reduce_sum(loss_sum, samples)
            train_loss = total_loss / max(total_samples, 1)
            if not math.isfinite(train_loss):
                _stop_on_nan(log, run_dir, epoch)
            val_loader = make_loader(val_set, per_rank_batch * 2, shuffle=False, workers=config.workers,
                                     device=device, rank=ctx.rank, world_size=ctx.world_size)
            result = infer(model, val_loader, device=device, precision=precision, progress=False)
            val_pck = pck(result.coords, result.gt, result.visibility, normalizer).overall
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
            if ctx.any(stop.requested):
                if is_main:
                    log(f"interrupted after epoch {epoch}; resume with:\n  hgpose train --resume {run_dir}")
                dist.cleanup()
                return run_dir
    if is_main:
        best = max(history, key=lambda r: r["val_pck"]) if history else None
        if best:
            log(f"done: best val PCK {best['val_pck']:.4f} at epoch {best['epoch']} -> {run_dir / 'best.safetensors'}")
    dist.cleanup()
    return run_dir


def _stop_on_nan(log: RunLog, run_dir: Path, epoch: int):
    log(f"non-finite training loss in epoch {epoch}: stopping; the checkpoints of earlier epochs in "
        f"{run_dir} are intact (try a lower --lr or --precision fp32)")
    dist.cleanup()
    raise UserError(f"{run_dir}: training loss became NaN or infinite in epoch {epoch}")
