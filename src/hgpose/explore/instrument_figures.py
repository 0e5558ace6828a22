"""Figures of the third edition's sections (dissection, receptive fields, facing, stacks), as PNG bytes."""

from __future__ import annotations

import cv2
import numpy as np
from matplotlib.figure import Figure

from hgpose.explore.dissection import PART_NAMES
from hgpose.explore.figures import SHORT_NAMES, encode_png, hwc, to_png


def overlay_tile(crop, activation, threshold: float, scale: int = 3) -> bytes:
    """A crop (3, S, S) enlarged `scale` times, in grey, with one channel's activation (r, r) upsampled
    bilinearly over it (jet colours where it exceeds its dissection threshold, outlined in white)."""
    size = crop.shape[-1] * scale
    grey = cv2.cvtColor(hwc(crop), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_NEAREST)
    base = np.repeat(grey[..., None], 3, axis=2).astype(np.float64) * 0.6
    up = cv2.resize(np.asarray(activation, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    low, high = float(up.min()), float(up.max())
    scaled = np.uint8(np.clip((up - low) / max(high - low, 1e-12), 0, 1) * 255)
    colour = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)[..., ::-1].astype(np.float64)
    above = up > threshold
    picture = np.where(above[..., None], 0.45 * base + 0.55 * colour, base)
    contours, _ = cv2.findContours(above.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    picture = np.ascontiguousarray(np.clip(picture, 0, 255).astype(np.uint8))
    cv2.drawContours(picture, contours, -1, (255, 255, 255), 1)
    return encode_png(picture)


def centred_maps_figure(maps, titles, input_size: int, radii50, radii90, columns: int = 9) -> bytes:
    """Mean centred gradient maps (M, 2S - 1, 2S - 1), each cropped to the crop's side around its centre, with
    circles at the 50% (dashed) and 90% (solid) radii; titles (M,)."""
    count = len(maps)
    rows = (count + columns - 1) // columns
    fig = Figure(figsize=(columns * 1.55, rows * 1.75))
    axes = fig.subplots(rows, columns, squeeze=False)
    half = input_size // 2
    centre = input_size - 1
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, m, title, r50, r90 in zip(axes.flat, maps, titles, radii50, radii90):
        window = np.nan_to_num(np.asarray(m)[centre - half : centre + half + 1, centre - half : centre + half + 1])
        ax.imshow(np.sqrt(window), cmap="magma", extent=(-half - 0.5, half + 0.5, half + 0.5, -half - 0.5))
        for radius, style in ((r50, "--"), (r90, "-")):
            if np.isfinite(radius):
                ax.add_patch(_circle(radius, style))
        ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.08, hspace=0.35)
    return to_png(fig)


def _circle(radius: float, style: str):
    from matplotlib.patches import Circle

    return Circle((0, 0), radius, fill=False, color="cyan", linestyle=style, linewidth=1)


def stage_bars_figure(labels, values, low, high, reference: float | None, title: str, ylabel: str,
                      second=None, second_label: str = "") -> bytes:
    """Values per stage with 95% error bars and a dashed reference line; optional second series (right axis)."""
    fig = Figure(figsize=(max(6.0, 0.75 * len(labels) + 2), 3.4))
    ax = fig.subplots()
    x = np.arange(len(labels))
    values = np.asarray(values, np.float64)
    errors = np.vstack([values - np.asarray(low), np.asarray(high) - values])
    ax.bar(x, values, color="#4c72b0", yerr=np.nan_to_num(errors), capsize=3, label=ylabel)
    if reference is not None and np.isfinite(reference):
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="always the commoner answer")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=10)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.set_title(title, fontsize=11)
    if second is not None:
        twin = ax.twinx()
        twin.plot(x, second, color="#dd8452", marker="o", label=second_label)
        twin.set_ylabel(second_label, fontsize=10, color="#dd8452")
        twin.set_ylim(0, max(0.05, float(np.nanmax(second)) * 1.2) if np.isfinite(second).any() else 1)
    ax.legend(fontsize=9, loc="upper left")
    fig.tight_layout()
    return to_png(fig)


def stack_maps_figure(crops, maps, coords, truth, visibility, input_size: int) -> bytes:
    """Per sample (rows): the crop, then each stack's heatmaps (the maximum over joints) over the crop with
    its decoded keypoints (cyan) and the labelled truth (white rings). maps (T, n, K, h, h); coords (T, n, K, 2)
    and truth (n, K, 2) in input coordinates."""
    stacks, count = maps.shape[0], maps.shape[1]
    fig = Figure(figsize=(2.3 * (stacks + 1), 2.4 * count))
    axes = fig.subplots(count, stacks + 1, squeeze=False)
    extent = (-0.5, input_size - 0.5, input_size - 0.5, -0.5)
    for i in range(count):
        labelled = (np.asarray(visibility[i]) == 1) | (np.asarray(visibility[i]) == 2)
        axes[i, 0].imshow(hwc(crops[i]))
        axes[i, 0].set_title(f"sample {i + 1}", fontsize=10)
        for t in range(stacks):
            ax = axes[i, t + 1]
            ax.imshow(hwc(crops[i]).mean(axis=2), cmap="gray", extent=extent)
            ax.imshow(maps[t, i].max(axis=0), cmap="jet", alpha=0.5, extent=extent, vmin=0, vmax=1)
            ax.scatter(coords[t, i, :, 0], coords[t, i, :, 1], s=10, c="cyan", marker="x")
            ax.scatter(truth[i, labelled, 0], truth[i, labelled, 1], s=22, facecolors="none", edgecolors="white")
            ax.set_title(f"stack {t + 1}", fontsize=10)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.2)
    return to_png(fig)


def part_labels() -> list[str]:
    return list(PART_NAMES)


__all__ = ["overlay_tile", "centred_maps_figure", "stage_bars_figure", "stack_maps_figure", "part_labels",
           "SHORT_NAMES"]
