"""The explore report's figures, each returned as PNG bytes (matplotlib Figure objects, no pyplot state).

Crops are (3, S, S) uint8 RGB; points on them are input pixel-centre coordinates, so pixel j of the
crop is drawn centred on coordinate j (imshow's default extent).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hgpose.draw import POINT_COLOURS, draw_pose
from hgpose.keypoints import KEYPOINT_NAMES

DPI = 80


def short_name(name: str) -> str:
    return name.replace("left_", "L ").replace("right_", "R ")


SHORT_NAMES = [short_name(n) for n in KEYPOINT_NAMES]


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)  # no bbox_inches="tight": it draws the figure twice
    return buffer.getvalue()


def encode_png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def hwc(crop) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(crop).transpose(1, 2, 0))


def pose_on_crop(crop, coords, confidence=None, truth=None, visibility=None, scale: int = 2,
                 min_confidence: float = 0.0) -> np.ndarray:
    """The crop enlarged `scale` times (nearest) with the predicted skeleton (hgpose.draw colours) and,
    given truth (K, 2) and visibility (K,), the labelled true keypoints as white rings.
    Returns (S * scale, S * scale, 3) uint8."""
    big = cv2.resize(hwc(crop), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    coords = np.asarray(coords, np.float64)
    confidence = np.ones(len(coords)) if confidence is None else np.asarray(confidence, np.float64)
    # input pixel-centre u -> image convention (u + 0.5), then enlarged
    keypoints = np.concatenate([(coords + 0.5) * scale, confidence[:, None]], axis=1)
    ring = None
    if truth is not None:
        ring = np.concatenate([(np.asarray(truth, np.float64) + 0.5) * scale,
                               np.asarray(visibility, np.float64)[:, None]], axis=1)
    return draw_pose(big, keypoints[None], min_confidence=min_confidence, thickness=max(1, scale),
                     truth=None if ring is None else ring[None])


def _axes_grid(rows: int, cols: int, cell: float = 1.25, title_space: float = 0.25):
    fig = Figure(figsize=(cols * cell, rows * (cell + title_space)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.06, hspace=0.3)
    return fig, axes


def _extent(size: int):
    return (-0.5, size - 0.5, size - 0.5, -0.5)


def _grey(crop) -> np.ndarray:
    return hwc(crop).mean(axis=2)


@dataclass
class MapRow:
    """One row of a per-joint map figure: a picture for its first column, then one map per joint over the
    greyed crop (heatmap resolution, stretched over the crop)."""

    picture: np.ndarray  # (H, W, 3) uint8, drawn in the first column
    label: str  # the first column's title
    maps: np.ndarray  # (K, h, h)
    titles: list[str]  # (K,) one per map
    points: np.ndarray | None = None  # (K, 2) input coordinates marked on each map; NaN: no mark
    ring: bool = False  # points as rings (the truth) rather than cyan crosses (a prediction)
    signed: bool = False  # a difference: blue-white-red, symmetric about 0


def joint_rows_figure(crop, rows: list[MapRow]) -> bytes:
    """The rows' per-joint maps in two blocks of joints (2 x len(rows) rows, about 10 columns). Maps share one
    scale, 0 (or -1 for signed rows) to 1, widened only for a map that leaves it, so that a heatmap's height
    can be compared across joints, rows and samples."""
    size = crop.shape[-1]
    k = len(rows[0].maps)
    half = (k + 1) // 2
    fig, axes = _axes_grid(2 * len(rows), half + 1)
    grey, extent = _grey(crop), _extent(size)
    for block in range(2):
        for r, row in enumerate(rows):
            line = axes[block * len(rows) + r]
            line[0].imshow(row.picture, extent=extent)
            line[0].set_title(row.label, fontsize=9)
            for c, j in enumerate(range(block * half, min(k, (block + 1) * half)), start=1):
                ax = line[c]
                ax.imshow(grey, cmap="gray", extent=extent, vmin=0, vmax=255)
                top = max(1.0, float(np.abs(row.maps[j]).max() if row.signed else row.maps[j].max()))
                ax.imshow(row.maps[j], cmap="RdBu_r" if row.signed else "magma", alpha=0.75, extent=extent,
                          vmin=-top if row.signed else 0, vmax=top)
                ax.set_title(row.titles[j], fontsize=8)
                if row.points is not None and np.isfinite(row.points[j]).all():
                    if row.ring:
                        ax.plot(*row.points[j], "o", ms=5, mfc="none", mec="black" if row.signed else "white", mew=1)
                    else:
                        ax.plot(*row.points[j], "x", ms=5, color="cyan", mew=1.2)
    return to_png(fig)


def truth_picture(crop, truth, visibility) -> np.ndarray:
    """The crop with the labelled true keypoints drawn as a skeleton."""
    return pose_on_crop(crop, truth, np.where(np.asarray(visibility) > 0, 1.0, 0.0), min_confidence=0.5)


def truth_rings(truth, visibility) -> np.ndarray:
    """(K, 2) the labelled true keypoints, NaN where unlabelled (no ring drawn)."""
    return np.where((np.asarray(visibility) > 0)[:, None], np.asarray(truth, np.float64), np.nan)


def heatmap_figure(crop, predicted, target, coords, confidence, truth, visibility) -> bytes:
    """Per joint the predicted heatmap and the target over the crop: 4 rows x 10 columns, the first column
    the crop with the predicted skeleton (rows 1, 3) and the true keypoints (rows 2, 4)."""
    return joint_rows_figure(crop, [
        MapRow(pose_on_crop(crop, coords, confidence), "predicted", predicted,
               [f"{SHORT_NAMES[j]} {confidence[j]:.2f}" for j in range(len(predicted))], coords),
        MapRow(truth_picture(crop, truth, visibility), "true", target,
               [f"{SHORT_NAMES[j]} target" for j in range(len(target))], truth_rings(truth, visibility), ring=True),
    ])


def activation_figure(crop, stages: dict, top: int = 7) -> bytes:
    """One row per stage: the channel mean, then the `top` channels with the largest mean activation,
    each normalised to its own range. stages: {name: (C, H, W)} for one sample."""
    fig, axes = _axes_grid(len(stages), top + 2, cell=1.0, title_space=0.05)
    axes[0, 0].imshow(hwc(crop))
    axes[0, 0].set_title("input", fontsize=8)
    for r, (name, maps) in enumerate(stages.items()):
        maps = np.asarray(maps, np.float32)
        _activation_tile(axes[r, 1], maps.mean(axis=0))
        axes[r, 1].set_title(f"{name} {maps.shape[1]}x{maps.shape[2]} mean", fontsize=7)
        strongest = np.argsort(-maps.mean(axis=(1, 2)))[:top]
        for c, channel in enumerate(strongest, start=2):
            _activation_tile(axes[r, c], maps[channel])
            axes[r, c].set_title(f"ch {channel}", fontsize=7)
    return to_png(fig)


SMALL_STAGE = 2  # stages this small (1x1, 2x2) are printed as numbers: as colours they are flat tiles


def _activation_tile(ax, tile):
    if tile.shape[-1] > SMALL_STAGE:
        ax.imshow(tile, cmap="viridis")
        return
    ax.set_xlim(-0.5, tile.shape[1] - 0.5)
    ax.set_ylim(tile.shape[0] - 0.5, -0.5)
    size = 8 if tile.shape[-1] == 1 else 6
    for (y, x), value in np.ndenumerate(tile):
        ax.text(x, y, f"{value:.2g}", ha="center", va="center", fontsize=size)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])


def branch_figure(contributions) -> bytes:
    """Grouped bars of skip and low RMS per level, and the skip share."""
    fig = Figure(figsize=(10, 3.4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    n = len(contributions.skip)
    x = np.arange(n)
    labels = [f"level {i + 1}\n{r}x{r}" for i, r in enumerate(contributions.resolution)]
    ax1.bar(x - 0.2, contributions.skip, 0.4, label="skip branch (same resolution)", color="#4c72b0")
    ax1.bar(x + 0.2, contributions.low, 0.4, label="low branch (upsampled)", color="#dd8452")
    ax1.set_xticks(x, labels, fontsize=9)
    ax1.set_ylabel("mean RMS of the contribution")
    ax1.legend(fontsize=9)
    ax2.bar(x, contributions.skip_share, 0.6, color="#4c72b0")
    ax2.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax2.set_ylim(0, 1)
    ax2.set_xticks(x, labels, fontsize=9)
    ax2.set_ylabel("skip / (skip + low)")
    fig.tight_layout()
    return to_png(fig)


def _joint_grid(crop, maps, coords, titles, cmap, signed: bool = False, extent=None, colorbar: bool = False
                ) -> bytes:
    """The crop and one map per joint (3 rows x 6 columns), maps over the greyed crop. Every joint's map has
    its own colour scale (0 or -max|map| to max|map|), so a weak map is as visible as a strong one;
    `colorbar` puts that scale beside each map."""
    size = crop.shape[-1]
    k = len(maps)
    cols = 6
    rows = -(-(k + 1) // cols)
    fig, axes = _axes_grid(rows, cols, cell=1.5 if not colorbar else 2.0)
    if colorbar:  # room for each map's colour bar and its tick labels
        fig.subplots_adjust(left=0.01, right=0.95, wspace=0.45)
    axes[0, 0].imshow(hwc(crop), extent=_extent(size))
    axes[0, 0].set_title("input", fontsize=9)
    grey = _grey(crop)
    for j in range(k):
        ax = axes.flat[j + 1]
        ax.imshow(grey, cmap="gray", extent=_extent(size), vmin=0, vmax=255)
        limit = float(np.nanmax(np.abs(maps[j]))) or 1.0  # an all-zero map: a plain 0-1 scale
        norm = {"vmin": -limit, "vmax": limit} if signed else {"vmin": 0, "vmax": limit}
        shown = ax.imshow(maps[j], cmap=cmap, alpha=0.7, extent=extent or _extent(size), **norm)
        ax.plot(*coords[j], "x", ms=6, color=np.array(POINT_COLOURS[j]) / 255, mew=1.5)
        ax.set_title(titles[j], fontsize=8)
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        if colorbar:
            bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
            bar.locator = MaxNLocator(4)
            bar.update_ticks()
            bar.ax.tick_params(labelsize=6)
            bar.solids.set_alpha(1)
    return to_png(fig)


def saliency_figure(crop, maps, coords, shares) -> bytes:
    """Saliency per joint (each map scaled to its own maximum), the predicted joint marked."""
    scaled = np.stack([m / max(float(m.max()), 1e-12) for m in maps])
    titles = [f"{SHORT_NAMES[j]} {100 * shares[j]:.0f}%" for j in range(len(maps))]
    return _joint_grid(crop, scaled, coords, titles, "inferno")


def occlusion_figure(crop, result, what: str) -> bytes:
    """Occlusion maps of one sample: what = "confidence_drop" (red: falls) or "shift" (input pixels)."""
    maps = getattr(result, what)
    centres = result.centres
    half = result.stride / 2
    extent = (centres[0] - half, centres[-1] + half, centres[-1] + half, centres[0] - half)
    if what == "confidence_drop":
        titles = [f"{SHORT_NAMES[j]} max {maps[j].max():.2f}" for j in range(len(maps))]
        return _joint_grid(crop, maps, result.coords, titles, "RdBu_r", signed=True, extent=extent, colorbar=True)
    titles = [f"{SHORT_NAMES[j]} max {maps[j].max():.0f}px" for j in range(len(maps))]
    return _joint_grid(crop, maps, result.coords, titles, "Greens", extent=extent, colorbar=True)


def lesion_figure(study, interval=None) -> bytes:
    """PCK per condition; interval (hgpose.explore.calibration.Interval of the (M,) PCKs) as error bars."""
    fig = Figure(figsize=(8, 0.35 * len(study.names) + 1))
    ax = fig.subplots()
    y = np.arange(len(study.names))
    colours = ["#555555" if not b else "#4c72b0" if b == "skip" else "#dd8452" for b in study.branch]
    ax.barh(y, study.overall, color=colours, **_error_bars(study.overall, interval, "xerr"))
    ax.axvline(study.overall[0], color="black", lw=0.8, ls="--")
    ax.set_yticks(y, [n + (" zeroed" if b else "") for n, b in zip(study.names, study.branch)], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("PCK")
    for yi, v in zip(y, study.overall):
        ax.text(min(v, 0.9) + 0.01, yi, f"{v:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    return to_png(fig)


def _error_bars(values, interval, axis: str) -> dict:
    if interval is None:
        return {}
    values = np.nan_to_num(np.asarray(values, np.float64))
    low = np.clip(values - np.nan_to_num(interval.low, nan=0.0), 0, None)
    high = np.clip(np.nan_to_num(interval.high, nan=0.0) - values, 0, None)
    return {axis: np.stack([low, high]), "capsize": 2, "error_kw": {"elinewidth": 0.8}}


def per_joint_figure(per_joint, counted, interval=None) -> bytes:
    """Per-joint PCK bars; interval (per-joint Interval) as 95% bootstrap error bars."""
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    x = np.arange(len(per_joint))
    colours = [np.array(c) / 255 for c in POINT_COLOURS]
    ax.bar(x, np.nan_to_num(per_joint), color=colours, **_error_bars(per_joint, interval, "yerr"))
    labels = [f"{n} ({c})" for n, c in zip(SHORT_NAMES, counted)]
    ax.set_xticks(x, labels, fontsize=8, rotation=40, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("PCK")
    ax.set_title("per-joint PCK (orange: left, blue: right, green: nose; labelled keypoints in brackets"
                 + ("; bars: 95% bootstrap interval)" if interval is not None else ")"), fontsize=9)
    fig.tight_layout()
    return to_png(fig)


# --- the second edition's figures -----------------------------------------------------------------------


def matrix_figure(matrix, row_labels, col_labels, title: str, cmap: str = "viridis", vmin=None, vmax=None,
                  label: str = "", annotate: bool = True, cell: float = 0.5) -> bytes:
    """A labelled matrix with a colour bar, values printed in the cells (NaN cells left blank)."""
    matrix = np.asarray(matrix, np.float64)
    rows, cols = matrix.shape
    fig = Figure(figsize=(max(4.0, cols * cell + 2.6), max(2.6, rows * cell + 1.6)))
    ax = fig.subplots()
    shown = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(np.arange(cols), col_labels, fontsize=9, rotation=45 if cols > 8 else 0,
                  ha="right" if cols > 8 else "center")
    ax.set_yticks(np.arange(rows), row_labels, fontsize=9)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if annotate:
        low, high = shown.get_clim()
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                dark = (value - low) / max(high - low, 1e-12) < 0.5
                # 8 points at the report's 80 dpi: about 9 px, readable without zooming (6 points was not)
                ax.text(j, i, f"{value:.2f}".replace("0.", ".").replace("-.", "-."), ha="center", va="center",
                        fontsize=8, color="white" if dark and cmap == "viridis" else "black")
    fig.tight_layout()
    return to_png(fig)


def reliability_figure(result) -> bytes:
    """Reliability diagram (accuracy per confidence bin, with the keypoint count per bin) and per-joint
    ECE and AUROC bars. result: hgpose.explore.calibration.Calibration."""
    fig = Figure(figsize=(11, 3.6))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 3]})
    curve = result.overall
    centres = (curve.edges[1:] + curve.edges[:-1]) / 2
    width = curve.edges[1] - curve.edges[0]
    filled = curve.count > 0
    ax1.bar(centres[filled], curve.accuracy[filled], width * 0.9, color="#4c72b0", label="fraction correct")
    ax1.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    ax1.plot(curve.confidence[filled], curve.accuracy[filled], "o", color="#dd8452", ms=4,
             label="bin's mean confidence")
    for x, n, a in zip(centres[filled], curve.count[filled], curve.accuracy[filled]):
        ax1.text(x, min(a, 0.93) + 0.02, str(n), ha="center", fontsize=6)
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1)
    ax1.set_xlabel("confidence (heatmap peak, clipped to [0, 1])")
    ax1.set_ylabel("fraction of keypoints correct (PCK)")
    ax1.set_title(f"all joints: ECE {result.ece:.3f}, AUROC {result.auroc:.3f}", fontsize=9)
    ax1.legend(fontsize=7, loc="upper left")
    x = np.arange(len(result.per_joint_ece))
    ax2.bar(x - 0.2, np.nan_to_num(result.per_joint_ece), 0.4, color="#dd8452", label="ECE (0 = calibrated)")
    ax2.bar(x + 0.2, np.nan_to_num(result.per_joint_auroc), 0.4, color="#4c72b0",
            label="AUROC correct vs wrong (0.5 = chance)")
    ax2.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax2.set_xticks(x, [f"{n} ({c})" for n, c in zip(SHORT_NAMES, result.counted)], fontsize=7, rotation=40,
                   ha="right")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7, loc="upper right")
    ax2.set_title("per joint (keypoints counted in brackets)", fontsize=9)
    fig.tight_layout()
    return to_png(fig)


def epoch_figure(epochs, series: dict, title: str, ylabel: str, lr_drop=None, ylim=None, marks=None,
                 references=None) -> bytes:
    """Lines against epoch, one per series entry {label: (E,) values}; references {label: (E,) values}
    (e.g. the network's own PCK, chance) in black and grey; the LR drop dashed, and marks {label: epoch}
    (e.g. the two compared checkpoints) dotted."""
    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    if len(series) == len(POINT_COLOURS):  # the joints: their skeleton colours
        colours = [np.array(c) / 255 for c in POINT_COLOURS]
    else:  # more lines than the default cycle's 10 would repeat its colours
        colours = [matplotlib.colormaps["tab20"](i % 20) for i in range(len(series))] if len(series) > 10 else None
    for i, (label, values) in enumerate(series.items()):
        ax.plot(epochs, values, "o-", ms=3, lw=1.2, label=label, **({"color": colours[i]} if colours else {}))
    for (label, values), style in zip((references or {}).items(), (("black", "s-", 2.0), ("grey", "-.", 1.2))):
        ax.plot(epochs, values, style[1], color=style[0], lw=style[2], ms=4, label=label)
    if lr_drop is not None:
        ax.axvline(lr_drop - 0.5, color="black", ls="--", lw=0.8, label=f"LR drop (epoch {lr_drop})")
    for (label, epoch), colour in zip((marks or {}).items(), ("#7f3c8d", "#11a579", "grey")):
        ax.axvline(epoch, color=colour, ls=":", lw=1.2, label=f"{label} (epoch {epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7, ncol=1 + (len(series) + len(references or {})) // 8, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return to_png(fig)


def attribution_figure(crop, joints, gradient, ig, random_gradient, random_ig, coords, correlations) -> bytes:
    """One row per joint: input gradient, Integrated Gradients, then both for the randomised model; each map
    scaled to its own 99th percentile. correlations: (J, 2) rank correlation trained vs randomised
    (gradient, IG)."""
    return map_columns_figure(crop, joints, [("input gradient", gradient, None), ("Integrated Gradients", ig, None),
                                             ("gradient, random model", random_gradient, correlations[:, 0]),
                                             ("IG, random model", random_ig, correlations[:, 1])], coords)


def map_columns_figure(crop, joints, columns, coords) -> bytes:
    """One row per joint, one column per (label, maps (J, S, S), rank correlations (J,) or None) over the greyed
    crop, each map scaled to its own 99th percentile; a column's correlation is printed in its titles."""
    size = crop.shape[-1]
    fig, axes = _axes_grid(len(joints), len(columns), cell=2.0, title_space=0.45)
    grey = _grey(crop)
    for r, j in enumerate(joints):
        for c, (label, maps, correlations) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(grey, cmap="gray", extent=_extent(size), vmin=0, vmax=255)
            top = max(float(np.percentile(maps[r], 99)), 1e-12)
            ax.imshow(np.clip(maps[r] / top, 0, 1), cmap="inferno", alpha=0.75, extent=_extent(size))
            ax.plot(*coords[j], "x", ms=6, color="cyan", mew=1.5)
            extra = f" (\u03c1 {correlations[r]:.2f})" if correlations is not None else ""
            ax.set_title(f"{SHORT_NAMES[j]}\n{label}{extra}", fontsize=8)
    return to_png(fig)


def deletion_figure(fractions, curves: dict, samples: int) -> bytes:
    """Mean confidence against the fraction of pixels removed, one line per order {label: (M, F)} with a
    band of +- 2 standard errors over the M sample-joint pairs."""
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    for label, values in curves.items():
        values = np.asarray(values, np.float64).reshape(-1, len(fractions))
        mean = values.mean(axis=0)
        error = 2 * values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0 * mean
        ax.plot(fractions, mean, "o-", ms=3, label=label)
        ax.fill_between(fractions, mean - error, mean + error, alpha=0.2)
    ax.set_xlabel("fraction of the crop's pixels replaced by grey")
    ax.set_ylabel("joint confidence (heatmap peak)")
    ax.set_title(f"deletion curves, mean of {samples} sample-joint pairs (band: +-2 standard errors)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return to_png(fig)
