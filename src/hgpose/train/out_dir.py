"""Taking a folder for a new run: `train --out DIR` writes only into a new or empty folder, or one that
a run of ours left before it began training, and a refused start removes what it created.

Never into a folder of someone else's files: a run writes metrics.csv, best.safetensors,
checkpoints/... and sweeps temp files, so a folder of the user's that happens to hold such names
would lose them.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from hgpose.runtime.files import TEMP_PREFIX, UserError, disk_errors
from hgpose.train.restart import never_finished_an_epoch
from hgpose.train.run_dir import LOCK_NAME, RUN_CONFIG, resume_command

# What a run writes before config.yaml (while it loads and checks its data): a run killed then
# leaves only these, and `train --out` of that folder starts it again.
EARLY_RUN_FILES = {LOCK_NAME, "train.log", "checkpoints"}
SHOWN = 3  # names quoted in a refusal


def check_new_run_dir(run_dir: Path) -> None:
    """UserError unless `run_dir` can take a new run: it is absent, an empty folder, or a folder that
    a run of ours left before its config.yaml. Nothing is touched."""
    run_dir = Path(run_dir)
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {run_dir}: {parent} is a file, not a folder")
            break
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a folder; give a new or empty folder for the run")
    if (run_dir / RUN_CONFIG).exists():
        again = (f"; it never finished an epoch, so `{resume_command(run_dir)}` may also give it new settings "
                 "(e.g. --lr)") if _quietly(never_finished_an_epoch, run_dir) else ""
        raise UserError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --out{again}")
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise UserError(f"--out {run_dir}: exists and holds files that are not an hgpose run ({shown}); a run "
                        "starts only in a new or empty folder: give another --out (nothing was changed)")


def foreign_entries(run_dir: Path) -> list[str]:
    """The names in a folder without config.yaml that no run of ours would have left there: all of
    them, unless the folder holds our lock file and otherwise only what a run writes before config.yaml
    (checkpoints/ empty but for our temp files)."""
    names = sorted(p.name for p in run_dir.iterdir())
    if not names or LOCK_NAME not in names:
        return names
    foreign = []
    for name in names:
        path = run_dir / name
        if name.startswith(TEMP_PREFIX):
            continue
        if name == "checkpoints" and path.is_dir() and not path.is_symlink():
            foreign += [f"checkpoints/{p.name}" for p in sorted(path.iterdir()) if not p.name.startswith(TEMP_PREFIX)]
        elif name not in EARLY_RUN_FILES or path.is_symlink() or path.is_dir():
            foreign.append(name)
    return foreign


def make_run_dir(run_dir: Path) -> list[Path]:
    """Create `run_dir` (and missing parents); return the folders this call created, deepest first,
    so that a refused start can remove them again."""
    run_dir = Path(run_dir)
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    created = []
    with disk_errors(run_dir):
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made by someone else just now: theirs, never removed
                if not folder.is_dir():
                    raise UserError(f"--out {run_dir}: {folder} exists and is not a folder") from None
                continue
            created.insert(0, folder)
    return created


@contextmanager
def new_run_dir(run_dir: Path, busy_message: str):
    """Check and create the folder of a new run for the `with` block; on an error before the run
    began training (no config.yaml yet) undo what this start did: remove the folders it created, or
    empty again the empty folder it was given. A refused `train` leaves nothing behind. A folder
    that another train holds (the busy error) is left to it."""
    check_new_run_dir(run_dir)
    was_empty = run_dir.is_dir() and not any(run_dir.iterdir())
    created = make_run_dir(run_dir)
    try:
        yield
    except BaseException as exc:
        if not (Path(run_dir) / RUN_CONFIG).exists() and str(exc) != busy_message:
            if created:
                remove_created(created)
            elif was_empty:
                for entry in run_dir.iterdir():  # only this start's files: the folder was empty
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        raise


def remove_created(created: list[Path]) -> None:
    """The run folder (what is in it is ours: it was new) and then each created parent, if empty."""
    shutil.rmtree(created[0], ignore_errors=True)
    for parent in created[1:]:
        try:
            parent.rmdir()
        except OSError:  # something else was put there meanwhile: keep it
            break


def _quietly(check, run_dir) -> bool:
    """A yes/no that only adds a hint: a damaged run says its own error at --resume."""
    try:
        return check(run_dir)
    except UserError:
        return False
