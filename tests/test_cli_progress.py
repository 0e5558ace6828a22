"""Progress bars off a terminal: a few plain lines, never a flood of carriage-return redraws."""

import io
import os
import subprocess
import sys
import time

from hgpose.runtime.progress import LOG_INTERVAL, progress_bar


def most_lines(started: float) -> int:
    """The start, the end, and one heartbeat per LOG_INTERVAL elapsed (a slow machine gets more)."""
    return 2 + int((time.monotonic() - started) // LOG_INTERVAL)


def test_a_bar_off_a_terminal_prints_its_start_and_end_as_plain_lines():
    log = io.StringIO()  # not a TTY, like a CI log or `2> file`
    started = time.monotonic()
    bar = progress_bar(total=20_000, desc="work", unit="item", file=log, dynamic_ncols=True, leave=False)
    for _ in range(20_000):
        bar.update()
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) <= most_lines(started), lines
    assert lines[-1].startswith("work: 100%") and "20000/20000" in lines[-1]


def test_frequent_postfix_and_description_updates_do_not_force_lines():
    """Training sets its running loss on the bar every 20 steps: off a terminal that must not print
    a line each time."""
    log = io.StringIO()
    started = time.monotonic()
    bar = progress_bar(total=2_000, desc="epoch 1", file=log)
    for step in range(2_000):
        bar.update()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{1 / (step + 1):.3e}")
            bar.set_description(f"epoch 1 ({step})")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) <= most_lines(started), lines
    assert "loss=" in lines[-1] and "100%" in lines[-1]


def test_a_disabled_bar_prints_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(100), file=log, disable=True):
        pass
    assert log.getvalue() == ""


def test_a_command_with_stderr_to_a_file_logs_a_few_lines(synth_dataset, tmp_path):
    log_path = tmp_path / "stderr.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "hgpose", "prepare", "--data", str(synth_dataset), "--splits", "train2017",
             "--cache-dir", str(tmp_path / "cache"), "--input-size", "32", "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=log, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0
    text = log_path.read_text()
    assert "\r" not in text
    bar_lines = [line for line in text.splitlines() if line.startswith("prepare train2017")]
    assert 1 <= len(bar_lines) <= most_lines(started) and "100%" in bar_lines[-1]
    assert len(text) < 2000 * most_lines(started) / 2
