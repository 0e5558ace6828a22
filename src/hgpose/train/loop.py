"""Training with the seed's protocol (Section 1.1), as an explicit loop.

Batch 16, MSE loss, RMSProp at 2.5e-4, no augmentation. After every epoch the train loss, val loss
and val PCK are recorded and a checkpoint is saved; the first time the best val PCK has not improved
for 5 epochs the learning rate drops x1/5, once and for good. No automatic early stopping.

`train()` reads as an outline: take the run directory, start (or resume) a Session, then per epoch
train_one_epoch, validate and end_epoch (the LR rule, checkpoints, metrics, the log line).
The run directory's files are described in hgpose.train.run_dir.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hgpose.data.augment import BatchAugment
from hgpose.data.coco import build_splits
from hgpose.data.dataset import PersonDataset
from hgpose.data.image_report import first_problems, image_report
from hgpose.data.loader import device_batches, make_loader
from hgpose.data.origin import origin_metadata
from hgpose.evaluation.inference import infer
from hgpose.evaluation.pck import pck, seed_normalizer
from hgpose.model.heatmaps import heatmap_loss, render_heatmaps
from hgpose.model.hourglass import ModelConfig, build_model, to_model_input
from hgpose.model.weights import save_model
from hgpose.runtime import distributed as dist
from hgpose.runtime.allocator import keep_freed_memory
from hgpose.runtime.compile import begin_step, compile_step_model
from hgpose.runtime.files import UserError, exclusive_lock, sweep_temp_files
from hgpose.runtime.memory_format import preferred_memory_format
from hgpose.runtime.precision import autocast, resolve_precision
from hgpose.runtime.progress import progress_bar
from hgpose.train.checkpoint import load_training_checkpoint, save_training_checkpoint
from hgpose.train.config import TrainConfig
from hgpose.train.machine import (
    difference_line,
    machine_differences,
    machine_record,
    recorded_machine,
    set_thread_count,
    thread_source,
)
from hgpose.train.out_dir import new_run_dir
from hgpose.train.restart import changed_settings, divergence_hint, restart_run
from hgpose.train.run_dir import (
    LOCK_NAME,
    RunLog,
    Tee,
    check_resumable,
    next_run_dir,
    record_moved_data,
    resume_command,
    write_metrics_csv,
    write_run_config,
)
from hgpose.train.run_info import write_run_info
from hgpose.train.tensorboard import TensorBoardLog, open_tensorboard, validation_crops

NON_FINITE_LOSS = "training loss became NaN or infinite"
EMPTY_PARTIAL = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}  # an epoch's running sums before its first step


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
        check_resumable(run_dir, config)
    recorded = recorded_machine(run_dir) if resume else None
    threads_line = set_thread_count(config, recorded)
    if not is_main:  # rank 0 holds the run's lock and writes its files; the others wait for its word
        if ctx.any(False):
            raise UserError(f"{run_dir}: not started: rank 0 could not take the run directory (its error says why)")
        return _train(config, run_dir, bool(resume), ctx, say_resume)
    busy = (f"{run_dir}: another hgpose train is writing to this run directory now (it holds "
            f"{run_dir / LOCK_NAME}); wait for it to end, or use another --out")
    with contextlib.ExitStack() as held:
        try:
            if not resume:  # refuses a file, a run or someone else's files; a refused start removes what it made
                held.enter_context(new_run_dir(run_dir, busy))
            held.enter_context(exclusive_lock(run_dir / LOCK_NAME, busy))
            if not resume and (run_dir / "config.yaml").exists():  # written by a run that just ended
                raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out")
            for folder in (run_dir, run_dir / "checkpoints"):
                if folder.is_dir():
                    sweep_temp_files(folder)  # what a save killed half-way left behind
            restarted = _restart_if_changed(config, run_dir) if resume else False
        except BaseException:
            ctx.any(True)  # under torchrun the other ranks stop too, instead of waiting in a collective
            raise
        ctx.any(False)
        log = RunLog(run_dir / "train.log")
        if threads_line:
            log(threads_line)
        if resume and not restarted:
            current = machine_record(ctx.device, resolve_precision(config.precision, ctx.device))
            differences = machine_differences(recorded, current, thread_source(config))
            if differences:
                log(difference_line(run_dir, differences))
        return _train(config, run_dir, bool(resume) and not restarted, ctx, say_resume)


def _restart_if_changed(config: TrainConfig, run_dir: Path) -> bool:
    """A resume with new settings of a run that never finished an epoch (resume_config allowed it only
    then) clears it to start afresh; True when it did."""
    changed = changed_settings(run_dir, config)
    if changed:
        restart_run(run_dir, changed, RunLog(run_dir / "train.log"))
    return bool(changed)


def _load_data(config: TrainConfig, log, is_main: bool):
    """The training and validation sets; what loading says goes to the console and train.log."""
    messages = Tee(sys.stderr)
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


# --- the run: set up once ---------------------------------------------------------------------------


@dataclass
class Session:
    """Everything the epochs of one process share, built once by start_session."""

    config: TrainConfig
    run_dir: Path
    ctx: object  # hgpose.runtime.distributed's process context
    precision: str
    log: RunLog
    model: torch.nn.Module  # the plain model: what checkpoints save
    train_model: torch.nn.Module  # what steps run: DDP-wrapped and/or compiled
    uses_graphs: bool
    optimizer: torch.optim.Optimizer
    schedule: PlateauDrop
    train_set: PersonDataset
    val_set: PersonDataset
    known_bad: set  # training images already reported unusable at the start
    drop_last: bool
    start_epoch: int = 1
    start_step: int = 0
    carried: dict = field(default_factory=lambda: dict(EMPTY_PARTIAL))  # the interrupted epoch's sums
    history: list = field(default_factory=list)
    origin: dict = field(default_factory=dict)  # checkpoint metadata: whether the data was generated
    tensorboard: TensorBoardLog | None = None  # rank 0's curves, when wanted and installed
    say_resume: bool = True  # the interrupt message names the command that resumes
    layout: torch.memory_format = torch.channels_last  # the step's memory layout, by device

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0

    @property
    def per_rank_batch(self) -> int:
        return self.config.batch_size // self.ctx.world_size

    def save_last(self, epoch: int, step_in_epoch: int, partial: dict) -> None:
        """last.safetensors: weights, optimizer, RNG and history; --resume continues from it."""
        if self.is_main:
            save_training_checkpoint(self.run_dir / "last.safetensors", self.model, self.optimizer, {
                "epoch": epoch, "step_in_epoch": step_in_epoch, "partial": partial,
                "schedule": asdict(self.schedule), "history": self.history,
            })

    def resume_hint(self) -> str:
        return f"; resume with:\n  {resume_command(self.run_dir)}" if self.say_resume else "; saved"

    @property
    def channels_last(self) -> bool:
        return self.layout == torch.channels_last

    def divergence_hint(self) -> str:
        """The command that restarts or replaces this run with a lower learning rate."""
        return divergence_hint(self.run_dir, self.config, len(self.history), self.precision)

    def stop(self, reason: str, epoch: int, hint: str = ""):
        """A run that cannot go on: one line, and the checkpoints of earlier epochs stay as they are."""
        if self.is_main:
            self.log(f"{reason} in epoch {epoch}: stopping; the checkpoints of earlier epochs in {self.run_dir} "
                     "are intact")
        dist.cleanup()
        raise UserError(f"{self.run_dir}: {reason} in epoch {epoch}{hint}")


def start_session(config: TrainConfig, run_dir: Path, resume: bool, ctx) -> Session:
    """The model, optimizer and LR rule (from last.safetensors when resuming), the data, and the
    run's files (config.yaml, run_info.json, the opening log line) for a new run."""
    device, is_main = ctx.device, ctx.rank == 0
    if config.batch_size % ctx.world_size:
        raise UserError(f"--batch-size {config.batch_size} is not divisible by {ctx.world_size} processes")
    log = RunLog(run_dir / "train.log" if is_main else None)
    torch.manual_seed(config.seed)  # any random op of the run is reproducible; --resume restores the state
    np.random.seed(config.seed)  # and so are numpy's and Python's (the checkpoint holds them too)
    random.seed(config.seed)
    layout = preferred_memory_format(device, config.precision)  # measured per device: runtime/memory_format.py
    model = build_model(config.model, seed=config.seed).to(device).to(memory_format=layout)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=config.lr)
    state = {"schedule": asdict(PlateauDrop(config.lr_patience, config.lr_factor)), "history": [], "epoch": 1,
             "step_in_epoch": 0, "partial": dict(EMPTY_PARTIAL)}
    resumed = resume and (run_dir / "last.safetensors").is_file()
    if resumed:  # before the data: a damaged checkpoint is one line at once, not after minutes of loading
        state = load_training_checkpoint(run_dir / "last.safetensors", model, optimizer)
    train_set, val_set = _load_data(config, log, is_main)
    known_bad = _report_images(config, train_set, val_set, log, ctx)
    if is_main:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if resume and is_main:
        record_moved_data(run_dir, config)
    precision = resolve_precision(config.precision, device)
    if is_main:
        _open_log(config, run_dir, resume, resumed, state, log, train_set, val_set, device, ctx, precision)
    if config.sync_bn and ctx.world_size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # about 1.5 min of compilation on a 2-core CPU before the first step
    train_model, uses_graphs = compile_step_model(ctx.wrap(model), config.compile, device)
    drop_last = _lone_last_sample(len(train_set), ctx.world_size, config.batch_size // ctx.world_size, config.model)
    if drop_last and is_main and state["epoch"] == 1 and state["step_in_epoch"] == 0:
        log("the last batch of every epoch would hold one sample, which batch norm cannot train on at this "
            "model's 1x1 bottleneck: that sample is left out of each epoch")
    return Session(config, run_dir, ctx, precision, log, model, train_model, uses_graphs, optimizer,
                   PlateauDrop(**state["schedule"]), train_set, val_set, known_bad, drop_last,
                   state["epoch"], state["step_in_epoch"], state["partial"], state["history"],
                   # each checkpoint says whether it learnt from generated figures (predict warns on photos)
                   origin_metadata(train_set.index.annotation_file),
                   open_tensorboard(run_dir, config.tensorboard and is_main, state["epoch"], resumed, log),
                   layout=layout)


def _report_images(config: TrainConfig, train_set, val_set, log, ctx) -> set[str]:
    """Unusable images of both sets counted up front (rank 0); returns the training set's, whose
    decode failures are then not reported twice. A set whose every sample is unusable stops the run
    here, before an epoch is spent on it (every rank stops together)."""
    known_bad: set[str] = set()
    unusable = None
    for what, dataset in (("training", train_set), ("validation", val_set)) if ctx.rank == 0 else ():
        images = image_report(dataset, progress=config.progress)
        for line in images.lines(what):
            log(line)
        if dataset is train_set:
            known_bad = set(images.problems)
        if unusable is None and images.bad_samples >= len(dataset):
            unusable = (f"{dataset.index.annotation_file}: all {len(dataset)} {what} samples are in unusable "
                        f"images (found in the {images.source}), e.g. {_first_problem(images)}; "
                        "training was not started")
    if ctx.any(unusable is not None):
        raise UserError(unusable or "not started: rank 0 found a data set without a usable image (its error says why)")
    return known_bad


def _first_problem(images) -> str:
    name, why = next(iter(images.problems.items()))
    return f"{name}: {why}"


def _open_log(config, run_dir, resume, resumed, state, log, train_set, val_set, device, ctx, precision) -> None:
    """The first lines of a run (rank 0): where a resume starts, or a new run's config.yaml,
    run_info.json and what it trains on."""
    if resumed:
        write_metrics_csv(run_dir / "metrics.csv", state["history"])  # drop any row written after `last`
        step = state["step_in_epoch"]
        log(f"resuming {run_dir} at epoch {state['epoch']}" + (f", step {step}" if step else ""))
        return
    if resume:
        log(f"resuming {run_dir}: it stopped before its first checkpoint, so it starts at epoch 1")
    else:
        write_run_config(run_dir, config)
    if not (run_dir / "run_info.json").is_file():
        write_run_info(run_dir, machine_record(device, precision))  # for the report, and a resume's check
    log(f"training {run_dir}: {len(train_set)} train / {len(val_set)} val instances, "
        f"{'cache' if train_set.using_cache else 'raw JPEG'} data, device {device}, "
        f"{ctx.world_size} process(es), precision {precision}, {config.augment.describe()}")


# --- the epochs -----------------------------------------------------------------------------------


def _train(config: TrainConfig, run_dir: Path, resume: bool, ctx, say_resume: bool = True) -> Path:
    session = start_session(config, run_dir, resume, ctx)
    session.say_resume = say_resume
    try:
        return _run_epochs(session)
    finally:
        if session.tensorboard is not None:
            session.tensorboard.close()


def _run_epochs(session: Session) -> Path:
    config, run_dir, ctx = session.config, session.run_dir, session.ctx
    with _StopRequest() as stop_request:
        for epoch in range(session.start_epoch, config.epochs + 1):
            lr = session.optimizer.param_groups[0]["lr"]
            sums = train_one_epoch(session, epoch, stop_request)
            if sums is None:  # stopped mid-epoch and saved where it was
                return run_dir
            train_loss = mean_train_loss(session, epoch, sums)
            val = validate(session, epoch)
            end_epoch(session, epoch, lr, train_loss, val, sums)
            if ctx.any(stop_request.requested) and epoch < config.epochs:
                if session.is_main:
                    session.log(f"interrupted after epoch {epoch}{session.resume_hint()}")
                dist.cleanup()
                return run_dir
    if session.is_main:
        best = max(session.history, key=lambda r: r["val_pck"])
        session.log(f"done: best val PCK {best['val_pck']:.4f} at epoch {best['epoch']} -> "
                    f"{run_dir / 'best.safetensors'}")
    dist.cleanup()
    return run_dir


@dataclass
class EpochSums:
    """An epoch's running loss sum (on the device: no host sync per step), samples and time."""

    loss_sum: torch.Tensor
    samples: int
    seconds_before: float  # spent in this epoch before a resume
    started: float = field(default_factory=time.perf_counter)

    train_seconds: float = 0.0  # the steps' time, set when the epoch's steps end

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def partial(self) -> dict:
        return {"loss_sum": float(self.loss_sum.item()), "samples": self.samples, "seconds": self.seconds()}


def train_one_epoch(s: Session, epoch: int, stop_request) -> EpochSums | None:
    """One epoch of steps (from the saved step when resuming into it); returns its sums, or None when
    a stop request ended it early (after saving where it was)."""
    config, ctx, device = s.config, s.ctx, s.ctx.device
    skip = s.start_step if epoch == s.start_epoch else 0
    carried = s.carried if skip else EMPTY_PARTIAL
    sums = EpochSums(torch.tensor(carried["loss_sum"], dtype=torch.float64, device=device), carried["samples"],
                     carried["seconds"])
    loader = make_loader(s.train_set, s.per_rank_batch, shuffle=True, seed=config.seed, epoch=epoch,
                         workers=config.workers, device=device, drop_last=s.drop_last, rank=ctx.rank,
                         world_size=ctx.world_size, start=skip * s.per_rank_batch)
    augment = BatchAugment(config.augment, config.seed, epoch, config.model.heatmap_size) \
        if config.augment.enabled else None
    steps_in_epoch, step, images_done, invalid_seen = skip + len(loader), skip, 0, []
    s.train_model.train()
    bar = progress_bar(total=steps_in_epoch, initial=skip, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                       disable=not (s.is_main and config.progress), dynamic_ncols=True, leave=False)
    for batch in device_batches(loader, device):  # on CUDA: the next copy overlaps this step
        begin_step(s.uses_graphs)
        loss = train_step(s.train_model, s.optimizer, batch, device, s.precision, config.model.heatmap_size,
                          channels_last=s.channels_last, augment=augment)
        n = int(batch["valid"].sum())
        if n < len(batch["valid"]):
            invalid_seen += batch["index"][~batch["valid"]].tolist()
        sums.loss_sum += loss.double() * n
        sums.samples += n
        images_done += len(batch["valid"])
        step += 1
        bar.update(1)
        if step % 20 == 0 or step == steps_in_epoch:  # a host sync every 20 steps, not every step
            running = sums.loss_sum.item() / max(sums.samples, 1)
            if not math.isfinite(running):
                s.stop(NON_FINITE_LOSS, epoch, s.divergence_hint())
            bar.set_postfix(loss=f"{running:.3e}", img_s=f"{images_done * ctx.world_size / sums.seconds():.1f}")
        if stop_request.requested and ctx.world_size == 1 and step < steps_in_epoch:
            break  # under torchrun the ranks stop together at the end of the epoch instead
    bar.close()
    if stop_request.requested and ctx.world_size == 1 and step < steps_in_epoch:
        _save_interrupted(s, epoch, step, steps_in_epoch, sums)
        return None
    if s.is_main and epoch == s.start_epoch and not s.train_set.using_cache:
        _report_decode_failures(s.train_set, invalid_seen, s.known_bad, s.log, epoch)
    sums.train_seconds = sums.seconds()
    return sums


def _save_interrupted(s: Session, epoch: int, step: int, steps_in_epoch: int, sums: EpochSums) -> None:
    s.save_last(epoch, step, sums.partial())
    if s.is_main:
        s.log(f"interrupted at epoch {epoch}, step {step}/{steps_in_epoch}{s.resume_hint()}")
    dist.cleanup()


def mean_train_loss(s: Session, epoch: int, sums: EpochSums) -> float:
    """The epoch's train loss over every rank; a run whose loss or weights went non-finite stops."""
    total_loss, total_samples = s.ctx.all_reduce_sum(sums.loss_sum, sums.samples)
    if total_samples == 0:
        s.stop(f"no readable training sample in {s.config.data}", epoch)
    train_loss = total_loss / total_samples
    if not math.isfinite(train_loss):
        s.stop(NON_FINITE_LOSS, epoch, s.divergence_hint())
    bad_tensor = _non_finite_tensor(s.model)
    if bad_tensor:
        s.stop(f"the model diverged: {bad_tensor} holds NaN or infinite values", epoch, s.divergence_hint())
    return train_loss


@dataclass
class Validation:
    loss: float
    pck: float
    unreadable: int  # validation samples whose image could not be read (skipped)


def validate(s: Session, epoch: int) -> Validation:
    """Val loss and the seed's PCK (c = heatmap side / 10, r = 0.5) over the held-out set."""
    ctx = s.ctx
    loader = make_loader(s.val_set, s.per_rank_batch * 2, shuffle=False, workers=s.config.workers,
                         device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
    result = infer(s.model, loader, device=ctx.device, precision=s.precision, channels_last=s.channels_last,
                   progress=False)
    val_pck = pck(result.coords, result.gt, result.visibility, seed_normalizer(s.config.model.heatmap_size)).overall
    unreadable = int((~result.valid).sum())
    if not (math.isfinite(result.loss) and math.isfinite(val_pck)):
        s.stop(f"validation gave a non-finite result (val loss {result.loss}, val PCK {val_pck}; "
               f"{unreadable} of {len(result.valid)} val samples unreadable)", epoch)
    return Validation(result.loss, val_pck, unreadable)


def end_epoch(s: Session, epoch: int, lr: float, train_loss: float, val: Validation, sums: EpochSums) -> None:
    """The seed's bookkeeping: the LR rule, this epoch's checkpoint, best (by val PCK), last, metrics.csv
    and the log line."""
    row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val.loss, "val_pck": val.pck,
           "epoch_seconds": sums.seconds()}
    s.history.append(row)
    improved = val.pck > s.schedule.best
    dropped = s.schedule.update(epoch, val.pck)
    if dropped:
        for group in s.optimizer.param_groups:
            group["lr"] *= s.config.lr_factor
    if not s.is_main:
        return
    save_model(s.model, s.run_dir / "checkpoints" / f"epoch_{epoch:03d}.safetensors", s.origin)
    if improved:
        save_model(s.model, s.run_dir / "best.safetensors", s.origin)
    if s.tensorboard is not None:  # before `last`: an epoch whose events a kill cut short is redone
        images_per_second = sums.samples * s.ctx.world_size / max(sums.train_seconds, 1e-9)
        crops = validation_crops(s.model, s.val_set, s.ctx.device, s.precision)
        s.tensorboard.epoch(row, images_per_second, crops)
    s.save_last(epoch + 1, 0, dict(EMPTY_PARTIAL))
    write_metrics_csv(s.run_dir / "metrics.csv", s.history)
    skipped = f", {val.unreadable} unreadable val samples skipped" if val.unreadable else ""
    s.log(f"epoch {epoch:3d}  lr {lr:.2e}  train_loss {train_loss:.4e}  val_loss {val.loss:.4e}  "
          f"val_pck {val.pck:.4f}{' *' if improved else ''}  {row['epoch_seconds']:.1f}s{skipped}")
    if dropped:
        s.log(f"val PCK has not improved for {s.config.lr_patience} epochs: learning rate x{s.config.lr_factor}"
              f" from epoch {epoch + 1} on (dropped after epoch {epoch}, once)")
