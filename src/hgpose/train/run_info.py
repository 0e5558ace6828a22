"""A run's identity: which data, when, and which hgpose (version and git commit) trained it.

`hgpose train` records the software in RUN_DIR/run_info.json when a run starts; the report reads
it back with the data path from config.yaml and the dates of the run's files, so that Figure 2
and Table 1 say what produced them.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

from hgpose.runtime.files import UserError, atomic_write_json, read_json
from hgpose.runtime.version import __version__
from hgpose.train.run_dir import run_record

RUN_INFO_FILE = "run_info.json"


def git_commit(directory: Path | None = None) -> str | None:
    """`git describe --always --dirty` of the checkout hgpose runs from; None outside a git checkout
    (an installed wheel) or without git."""
    directory = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(directory), "describe", "--always", "--dirty", "--abbrev=12"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def software_identity() -> dict:
    return {"hgpose_version": __version__, "git_commit": git_commit()}


def utc_timestamp(seconds: float | None = None) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc) if seconds is not None else datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def write_run_info(run_dir, machine: dict | None = None) -> Path:
    """RUN_DIR/run_info.json: the hgpose version and commit of this run and when it started, and the
    machine it started on (hgpose.train.machine: what a bit-identical resume needs again)."""
    record = software_identity() | {"started": utc_timestamp()} | ({"machine": machine} if machine else {})
    return atomic_write_json(Path(run_dir) / RUN_INFO_FILE, record)


def run_identity(run_dir) -> dict:
    """What identifies a run, from its files: run_dir, data, started, last_epoch (dates, UTC),
    hgpose_version and git_commit (None where unknown), and recorded: whether the version came from
    the run itself (False: it is the hgpose writing the report, for a run older than run_info.json)."""
    run_dir = Path(run_dir)
    identity = {"run_dir": str(run_dir.resolve()), "data": None, "started": None, "last_epoch": None}
    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.csv"
    if config_file.is_file():
        data = run_record(run_dir).get("data")
        if data is not None:
            identity["data"] = str(data)
        identity["started"] = utc_timestamp(config_file.stat().st_mtime)
    if metrics_file.is_file():
        identity["last_epoch"] = utc_timestamp(metrics_file.stat().st_mtime)
    info_file = run_dir / RUN_INFO_FILE
    try:
        info = read_json(info_file, "run info") if info_file.is_file() else None
    except UserError:  # a damaged record: say what is known rather than stop the report
        info = None
    if isinstance(info, dict):
        identity.update(hgpose_version=info.get("hgpose_version"), git_commit=info.get("git_commit"),
                        recorded=True)
        identity["started"] = info.get("started") or identity["started"]
    else:
        identity.update(software_identity(), recorded=False)
    return identity


def identity_markdown(identity: dict) -> str:
    """One line: run, data, dates and software."""
    software = f"hgpose {identity['hgpose_version']}, commit {identity['git_commit'] or 'unknown'}"
    if not identity["recorded"]:
        software += " (the hgpose writing this report: the run did not record its own)"
    dates = f"started {identity['started'] or 'unknown'}, last epoch written {identity['last_epoch'] or 'unknown'}"
    return f"Run `{identity['run_dir']}`: data `{identity['data'] or 'unknown'}`; {dates}; {software}."
