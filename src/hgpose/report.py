"""The seed's Section 1.2 for a run: Figure 2 (loss and PCK curves) and Table 1 (the best epochs).

Reads RUN_DIR/metrics.csv (epoch, lr, train_loss, val_loss, val_pck, ...) and, when present,
RUN_DIR/test_eval.json (written by `hgpose evaluate --out`). Writes into RUN_DIR:
    figure2.png, figure2.pdf   2x3: training loss, validation loss, validation PCK against epoch;
                               top row every epoch, bottom row from epoch 2 on
    table1.md, table1.csv      the epochs of best training loss, validation loss, validation accuracy
    report.json                the same numbers plus the selected model and its test PCK
"""

from __future__ import annotations

import csv
import io
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from hgpose.evaluate import headline_pck
from hgpose.runtime.files import UserError, atomic_path, atomic_write_json, atomic_write_text, read_json
from hgpose.train.run_info import identity_markdown, run_identity

REQUIRED_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_pck")
TABLE1_COLUMNS = ("Description", "Epoch", "Training loss", "Validation loss", "Validation accuracy")
# (row description, metrics column, whether larger is better)
TABLE1_ROWS = (
    ("Best training loss", "train_loss", False),
    ("Best validation loss", "val_loss", False),
    ("Best validation accuracy", "val_pck", True),
)
PANELS = (("train_loss", "Training loss"), ("val_loss", "Validation loss"), ("val_pck", "Validation PCK"))
TEST_EVAL_FILE = "test_eval.json"


def read_metrics(path) -> list[dict]:
    """metrics.csv rows as dicts: epoch int, the other columns float (NaN where empty)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: metrics file not found (is this a training run directory?)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(expected {', '.join(REQUIRED_COLUMNS)})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                row = {k: math.nan if v in (None, "") else float(v) for k, v in raw.items() if k is not None}
                row["epoch"] = int(row["epoch"])
            except ValueError:
                raise UserError(f"{path}: line {line}: not a number in {dict(raw)}") from None
            rows.append(row)
    if not rows:
        raise UserError(f"{path}: no epochs recorded yet")
    return sorted(rows, key=lambda r: r["epoch"])


def lr_drop_epoch(metrics: list[dict]) -> int | None:
    """The first epoch trained at a lower learning rate than the epoch before it (None: no drop)."""
    for previous, row in zip(metrics, metrics[1:]):
        if row["lr"] < previous["lr"]:
            return row["epoch"]
    return None


def best_row(metrics: list[dict], column: str, larger_is_better: bool) -> dict:
    """The best epoch for a column; ties go to the earliest epoch, NaN never wins."""
    def key(row):
        value = row[column]
        if math.isnan(value):
            return math.inf
        return -value if larger_is_better else value

    return min(metrics, key=key)  # min keeps the first of equal keys, i.e. the earliest epoch


def table1(metrics: list[dict]) -> list[dict]:
    """The seed's Table 1 rows (raw numbers): Description, Epoch, Training loss, Validation loss,
    Validation accuracy."""
    rows = []
    for description, column, larger in TABLE1_ROWS:
        best = best_row(metrics, column, larger)
        rows.append({"Description": description, "Epoch": best["epoch"], "Training loss": best["train_loss"],
                     "Validation loss": best["val_loss"], "Validation accuracy": best["val_pck"]})
    return rows


def format_loss(value: float) -> str:
    return f"{value:.2e}"  # as the seed writes them: 4.19e-05


def format_accuracy(value: float) -> str:
    return f"{value:.3f}"


def formatted_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["Description"], str(r["Epoch"]), format_loss(r["Training loss"]),
             format_loss(r["Validation loss"]), format_accuracy(r["Validation accuracy"])] for r in rows]


def table1_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE1_COLUMNS) + " |", "|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in formatted_rows(rows)]
    return "\n".join(lines)


def table1_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE1_COLUMNS)
    writer.writerows(formatted_rows(rows))
    return buffer.getvalue()


@dataclass
class Selection:
    """The model the seed goes on with: the epoch of best validation accuracy, and its test PCK."""

    epoch: int
    checkpoint: str
    train_loss: float
    val_loss: float
    val_pck: float
    lr_drop_epoch: int | None
    epochs: int
    test_pck: float | None = None
    test_split: str | None = None
    test_checkpoint: str | None = None
    test_ap: list[dict] | None = None  # COCO keypoint AP / AP50 / AP75 and the boxes it used


def select_model(run_dir: Path, metrics: list[dict]) -> Selection:
    best = best_row(metrics, "val_pck", True)
    selection = Selection(
        epoch=best["epoch"], checkpoint=f"checkpoints/epoch_{best['epoch']:03d}.safetensors",
        train_loss=best["train_loss"], val_loss=best["val_loss"], val_pck=best["val_pck"],
        lr_drop_epoch=lr_drop_epoch(metrics), epochs=len(metrics),
    )
    test_file = run_dir / TEST_EVAL_FILE
    if test_file.is_file():
        test = read_json(test_file, "test evaluation")
        try:
            selection.test_pck = headline_pck(test)
        except (KeyError, TypeError):
            raise UserError(f"{test_file}: not an `hgpose evaluate` result (no pck.all.overall)") from None
        selection.test_split = test.get("split")
        selection.test_checkpoint = test.get("checkpoint")
        selection.test_ap = test_ap_rows(test)
    return selection


def test_ap_rows(test: dict) -> list[dict]:
    """The COCO keypoint APs of an `hgpose evaluate` result, each with the boxes it used."""
    rows = []
    blocks = [(test.get("coco_boxes", "ground-truth boxes"), test.get("coco")),
              ((test.get("detected_boxes") or {}).get("boxes"), (test.get("detected_boxes") or {}).get("coco"))]
    for boxes, stats in blocks:
        if boxes and isinstance(stats, dict) and stats.get("AP") is not None:
            rows.append({"boxes": boxes, **{k: stats.get(k) for k in ("AP", "AP50", "AP75")}})
    return rows


def selection_markdown(selection: Selection) -> str:
    drop = (f"the learning rate dropped after epoch {selection.lr_drop_epoch - 1}"
            if selection.lr_drop_epoch else "the learning rate never dropped")
    lines = [
        f"Table 1: the epochs yielding the best training loss, validation loss and validation accuracy "
        f"({selection.epochs} epochs; {drop}).",
        "",
        f"Selected model (highest validation accuracy): epoch {selection.epoch}, `{selection.checkpoint}` "
        f"(= `best.safetensors`): training loss {format_loss(selection.train_loss)}, validation loss "
        f"{format_loss(selection.val_loss)}, validation accuracy {format_accuracy(selection.val_pck)}.",
    ]
    if selection.test_pck is not None:
        lines.append(f"Test PCK ({selection.test_split}, ground-truth boxes, all annotated keypoints v = 1 and 2, "
                     f"`{selection.test_checkpoint}`): {format_accuracy(selection.test_pck)}.")
        for row in selection.test_ap or []:
            figures = " / ".join("-" if row[k] is None else format_accuracy(row[k]) for k in ("AP", "AP50", "AP75"))
            lines.append(f"Test COCO keypoint AP / AP50 / AP75 ({row['boxes']}): {figures}.")
    else:
        lines.append(f"No test evaluation yet: `hgpose evaluate --checkpoint best.safetensors --data DIR "
                     f"--out {TEST_EVAL_FILE}` in the run directory adds it.")
    return "\n".join(lines)


def figure2(metrics: list[dict], title: str | None = None, subtitle: str | None = None):
    """Figure 2 as a matplotlib Figure (no pyplot: nothing global, no display needed).

    Losses are drawn on a log axis, so that one epoch whose loss spikes (a bad batch, an LR too high)
    does not flatten every other epoch into a line; epochs are integer ticks; a panel gets a legend
    only when it has something to label."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3)
    drop = lr_drop_epoch(metrics)
    best = {column: best_row(metrics, column, larger)["epoch"] for _, column, larger in TABLE1_ROWS}
    for row, first_epoch in enumerate((1, 2)):
        shown = [m for m in metrics if m["epoch"] >= first_epoch]
        for col, (column, label) in enumerate(PANELS):
            ax = axes[row, col]
            ax.set_title(label + (" (all epochs)" if row == 0 else " (from epoch 2)"), fontsize=10)
            ax.set_xlabel("epoch")
            if not shown:
                ax.text(0.5, 0.5, "needs 2 or more epochs", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            epochs = [m["epoch"] for m in shown]
            values = [m[column] for m in shown]
            ax.plot(epochs, values, marker=".", color=f"C{col}")
            if drop is not None and drop >= first_epoch:
                ax.axvline(drop - 0.5, color="grey", linestyle="--", linewidth=1,
                           label=f"LR drop (after epoch {drop - 1})")
            if best[column] >= first_epoch:  # this panel's own best epoch
                value = next(m[column] for m in shown if m["epoch"] == best[column])
                ax.plot([best[column]], [value], marker="*", markersize=13, color="black", linestyle="none",
                        label=f"best: epoch {best[column]}")
            if column != "val_pck" and best["val_pck"] >= first_epoch:  # the selected model, on the losses
                ax.axvline(best["val_pck"], color="C2", linestyle=":", linewidth=1,
                           label=f"selected (best PCK): epoch {best['val_pck']}")
            finite = [v for v in values if math.isfinite(v)]
            if column != "val_pck" and finite and min(finite) > 0:
                ax.set_yscale("log")
                ax.set_ylabel("log scale", fontsize=8)
            elif column != "val_pck":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            if len(epochs) == 1:  # one point: an x range of its own, not matplotlib's +-0.05 around it
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    if title:
        lines = textwrap.wrap(title, TITLE_CHARS) + (textwrap.wrap(subtitle, TITLE_CHARS) if subtitle else [])
        fig.suptitle("\n".join(lines), fontsize="medium" if subtitle else "large")
    return fig


# characters per line of Figure 2's title: wrapped, a long run path or data path is never cut off
# at the figure's edges (13 inches at 10 pt hold about 170)
TITLE_CHARS = 140


def shown_identity(identity: dict) -> dict:
    """The identity as figures and Table 1 show it: the run's and the data's folder names, not the
    absolute paths of the machine that made them (report.json keeps those)."""
    shown = dict(identity)
    for key in ("run_dir", "data"):
        if shown.get(key):
            shown[key] = Path(shown[key]).name or shown[key]
    return shown


def write_report(run_dir) -> dict[str, Path]:
    """Write Figure 2, Table 1 and report.json into run_dir; returns {file name: path}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    metrics = read_metrics(run_dir / "metrics.csv")
    rows = table1(metrics)
    selection = select_model(run_dir, metrics)
    identity = run_identity(run_dir)
    outputs = {}
    shown = shown_identity(identity)
    fig = figure2(metrics, title=f"{shown['run_dir']}: training loss, validation loss and validation PCK",
                  subtitle=identity_markdown(shown).replace("`", ""))
    for suffix in ("png", "pdf"):
        path = run_dir / f"figure2.{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=150)
        fig.set_layout_engine("none")  # keep the layout the first save computed: the second is faster
        outputs[path.name] = path
    markdown = (table1_markdown(rows) + "\n\n" + selection_markdown(selection) + "\n\n"
                + identity_markdown(shown) + "\n")
    outputs["table1.md"] = atomic_write_text(run_dir / "table1.md", markdown)
    outputs["table1.csv"] = atomic_write_text(run_dir / "table1.csv", table1_csv(rows))
    outputs["report.json"] = atomic_write_json(run_dir / "report.json", _json_ready(
        {"table1": rows, "selected_model": asdict(selection), "run": identity}))
    return outputs


def _json_ready(value):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value
