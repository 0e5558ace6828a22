"""Person boxes from a simple CSV file, for `hgpose predict --boxes boxes.csv`.

One row per person: file_name,x,y,w,h[,score] (x, y the top-left corner, w, h the size, in pixels of
the photo as every viewer shows it, i.e. turned upright by its EXIF orientation: a person wrote these
boxes looking at it; COCO files, by contrast, refer to the stored pixels). file_name is a base name or
a path relative to the image root (seqA/000000.jpg); one that would match several given files is an
error (hgpose.predict). An optional header row names the columns; a detector's score column is
accepted and not used. Rows of one image may be anywhere in the file; images are numbered 1, 2, ...
in the order they first appear (the image_id of the results).
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

from hgpose.fileio import UserError

COLUMNS = ("file_name", "x", "y", "w", "h", "score")


def load_boxes_csv(path) -> dict[str, tuple[int, np.ndarray]]:
    """file name -> (image id, (P, 4) boxes x, y, w, h); UserError naming the file and line for a
    malformed row. Boxes without a positive finite size are skipped and counted on stderr."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: boxes file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a CSV text file (not UTF-8)") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc})") from None
    boxes: dict[str, list[list[float]]] = {}
    degenerate, first_row = [], True
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        cells = [cell.strip() for cell in row]
        header, first_row = first_row and cells[0].lower() == COLUMNS[0], False
        if header:
            continue
        if len(cells) not in (5, 6) or not cells[0]:
            raise UserError(f"{path}: line {line}: expected {','.join(COLUMNS[:5])}[,score], got {','.join(row)!r}")
        try:
            x, y, w, h = (float(v) for v in cells[1:5])
            if len(cells) == 6:
                float(cells[5])
        except ValueError:
            raise UserError(f"{path}: line {line}: not a number in {','.join(row)!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            degenerate.append(line)
            continue
        boxes.setdefault(cells[0], []).append([x, y, w, h])
    if degenerate:
        lines = ", ".join(map(str, degenerate[:5])) + (" ..." if len(degenerate) > 5 else "")
        print(f"{path}: skipped {len(degenerate)} box(es) without a positive finite size (line {lines})",
              file=sys.stderr)
    if not boxes:
        raise UserError(f"{path}: no boxes (expected rows of {','.join(COLUMNS[:5])}[,score])")
    return {name: (number, np.asarray(rows, np.float64)) for number, (name, rows) in enumerate(boxes.items(), 1)}
