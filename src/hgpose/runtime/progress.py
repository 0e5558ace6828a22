"""Progress bars that suit both a terminal and a log file: every bar in hgpose comes from progress_bar.

On a terminal it is a plain tqdm bar. Off a terminal (CI, `| tee`, stderr redirected to a file) a
redrawn bar would write a carriage-return line every tenth of a second, megabytes over a long run;
there the bar prints one plain line at most every LOG_INTERVAL seconds, and always its final state.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines off a terminal


class _LogLines:
    """A stream for tqdm that turns each redraw into one newline-ended line and drops the blank
    redraws tqdm uses to clear a bar (meaningless in a file)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _ThrottledBar(tqdm):
    """A bar whose postfix and description changes wait for the next throttled line instead of
    forcing one each (training sets its loss every 20 steps)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, file=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), redrawn in place on a terminal, else throttled to plain lines
    (one at the start, one every LOG_INTERVAL seconds, one at the end)."""
    stream = file if file is not None else sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.update(mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, leave=True, dynamic_ncols=False, ascii=True)
    kwargs.setdefault("ncols", 100)
    return _ThrottledBar(iterable, file=_LogLines(stream), **kwargs)
