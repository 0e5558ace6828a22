"""Skeleton overlays: the COCO skeleton on an RGB image, left and right limbs in distinct colours.

Keypoints are (x, y, confidence) in image coordinates (hgpose.data.transforms: pixel i covers
[i, i+1), so x is drawn at OpenCV's pixel-centre coordinate x - 0.5). A keypoint below
min_confidence is hidden, and so is every limb touching it; the others are blended in with an
opacity that grows with their confidence, so doubtful ones look dim.
"""

from __future__ import annotations

import cv2
import numpy as np

from hgpose.coco_names import KEYPOINT_NAMES, SKELETON

# RGB; chosen to stay apart for the common forms of colour blindness (orange vs blue)
LEFT_COLOUR = (255, 140, 0)
RIGHT_COLOUR = (30, 144, 255)
CENTRE_COLOUR = (60, 200, 60)
TRUTH_COLOUR = (255, 255, 255)
DEFAULT_MIN_CONFIDENCE = 0.2
_SHIFT = 4  # fractional bits for OpenCV drawing: 1/16-pixel positions


def side_of(names) -> str:
    """'left', 'right' or 'centre' for a keypoint name or a pair (a limb) of them."""
    names = [names] if isinstance(names, str) else list(names)
    left = any(n.startswith("left_") for n in names)
    right = any(n.startswith("right_") for n in names)
    return "left" if left and not right else "right" if right and not left else "centre"


SIDE_COLOURS = {"left": LEFT_COLOUR, "right": RIGHT_COLOUR, "centre": CENTRE_COLOUR}
LIMBS = tuple((a - 1, b - 1) for a, b in SKELETON)  # 0-based
LIMB_COLOURS = tuple(SIDE_COLOURS[side_of((KEYPOINT_NAMES[a], KEYPOINT_NAMES[b]))] for a, b in LIMBS)
POINT_COLOURS = tuple(SIDE_COLOURS[side_of(name)] for name in KEYPOINT_NAMES)


def _fixed(x: float, y: float) -> tuple[int, int]:
    return int(round((x - 0.5) * (1 << _SHIFT))), int(round((y - 0.5) * (1 << _SHIFT)))


def _paint(image: np.ndarray, draw, colour, alpha: float) -> None:
    """Paint what draw(mask) marks on `image` in `colour` at opacity alpha (anti-aliased edges kept)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    draw(mask)
    ys, xs = np.nonzero(mask)
    weight = (mask[ys, xs] * (alpha / 255.0))[:, None]
    image[ys, xs] = np.round(weight * np.asarray(colour) + (1 - weight) * image[ys, xs]).astype(np.uint8)


def default_thickness(shape) -> int:
    return max(1, int(round(max(shape[:2]) / 250)))


def draw_pose(image: np.ndarray, keypoints, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
              thickness: int | None = None, truth=None) -> np.ndarray:
    """A copy of RGB `image` (H, W, 3) uint8 with every person's skeleton drawn.

    keypoints: (P, 17, 3) or (17, 3) x, y, confidence in image coordinates (a confidence of 1 draws
    ground truth at full opacity). truth: optional (P, 17, 3) x, y, COCO visibility drawn as small
    white rings at labelled points, to compare with the prediction.
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, len(KEYPOINT_NAMES), 3)
    thickness = thickness or default_thickness(out.shape)
    radius = thickness + 1
    for person in keypoints:
        shown = np.isfinite(person).all(axis=1) & (person[:, 2] >= min_confidence)
        opacity = np.clip(0.35 + 0.65 * person[:, 2], 0.35, 1.0)
        for (a, b), colour in zip(LIMBS, LIMB_COLOURS):
            if shown[a] and shown[b]:
                pa, pb = _fixed(*person[a, :2]), _fixed(*person[b, :2])
                _paint(out, lambda m, pa=pa, pb=pb: cv2.line(m, pa, pb, 255, thickness, cv2.LINE_AA, _SHIFT),
                       colour, float(min(opacity[a], opacity[b])))
        for k in np.flatnonzero(shown):
            centre = _fixed(*person[k, :2])
            _paint(out, lambda m, c=centre: cv2.circle(m, c, radius << _SHIFT, 255, -1, cv2.LINE_AA, _SHIFT),
                   POINT_COLOURS[k], float(opacity[k]))
    if truth is not None:
        for person in np.asarray(truth, dtype=np.float64).reshape(-1, len(KEYPOINT_NAMES), 3):
            for x, y, v in person:
                if v > 0:
                    ring = (radius + 1) << _SHIFT
                    cv2.circle(out, _fixed(x, y), ring, TRUTH_COLOUR, 1, cv2.LINE_AA, _SHIFT)
    return out
