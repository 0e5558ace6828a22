"""A run that never finished an epoch may start again with new settings: `--resume RUN --lr X`.

Such a run has nothing to keep (no epoch's weights or metrics), and the usual reason to stop there
is a divergence in epoch 1, whose remedy is another --lr or --precision. So --resume accepts any
option then and starts the run afresh in its own folder, instead of refusing the change as it does
for a run with epochs to protect (`train --out RUN` still refuses: it would take a folder that
holds a run). The hint printed at a divergence is the command that works for the run at hand.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from hgpose.train.config import RESUMABLE_OVERRIDES, TrainConfig
from hgpose.train.run_dir import load_run_config, next_run_dir, resume_command, run_progress
from hgpose.train.run_info import RUN_INFO_FILE
from hgpose.train.tensorboard import TENSORBOARD_DIR

# what a restart removes: whatever an earlier start of the run wrote about its training
RESTART_REMOVES = ("last.safetensors", "best.safetensors", "metrics.csv", RUN_INFO_FILE)


def never_finished_an_epoch(run_dir: Path) -> bool:
    """True before the first epoch's checkpoint (also after a stop inside epoch 1)."""
    return run_progress(run_dir)[0] == 1


def changed_settings(run_dir: Path, config: TrainConfig) -> list[str]:
    """The options of `config` that differ from the run's config.yaml and would change its result,
    as 'lr 2.5e-05 (was 0.00025)'."""
    saved, new = load_run_config(run_dir).to_dict(), config.to_dict()
    ignored = RESUMABLE_OVERRIDES | {"data", "out", "threads"}
    return [f"{key} {new[key]!r} (was {saved[key]!r})" for key in saved
            if key not in ignored and saved[key] != new.get(key)]


def restart_run(run_dir: Path, changed: list[str], log) -> None:
    """Clear a run that never finished an epoch for a fresh start (the caller holds its lock; the
    new config.yaml is written as training starts, as for any new run). train.log is kept: it says
    why the first start stopped."""
    run_dir = Path(run_dir)
    for name in RESTART_REMOVES:
        (run_dir / name).unlink(missing_ok=True)
    for checkpoint in (run_dir / "checkpoints").glob("epoch_*.safetensors"):  # a kill between two saves
        checkpoint.unlink()
    shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)  # events of an epoch cut short
    log(f"restarting {run_dir} from epoch 1 with new settings (it never finished an epoch): {', '.join(changed)}")


def divergence_hint(run_dir: Path, config: TrainConfig, finished_epochs: int, precision: str) -> str:
    """What to run after a divergence: the exact command, with a learning rate ten times lower (and
    fp32 as the other remedy when the run used bf16)."""
    lower = f"{config.lr / 10:g}"
    if finished_epochs == 0:
        command = resume_command(run_dir)
        other = f" or `{command} --precision fp32`" if precision == "bf16" else ""
        return (f"; it never finished an epoch, so restart it with a lower learning rate: `{command} --lr {lower}`"
                f"{other}")
    new_run = next_run_dir(Path(run_dir).parent, Path(run_dir).name)
    command = (f"hgpose train --config {shlex.quote(str(Path(run_dir) / 'config.yaml'))} "
               f"--out {shlex.quote(str(new_run))}")
    other = f" or `{command} --precision fp32`" if precision == "bf16" else ""
    return f"; start a new run with a lower learning rate: `{command} --lr {lower}`{other}"
