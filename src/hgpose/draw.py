"""Skeleton overlays: the COCO skeleton on an RGB image, left and right limbs in distinct colours.

Keypoints are (x, y, confidence) in image coordinates (hgpose.data.transforms: pixel i covers
[i, i+1), so x is drawn at OpenCV's pixel-centre coordinate x - 0.5). A keypoint below
min_confidence is hidden, and so is every limb touching it; the others are blended in with an
opacity that grows with their confidence, so doubtful ones look dim.

Line width and point size follow each person's size (its box, else the spread of its keypoints),
so a skeleton reads the same on a thumbnail and on a 12-megapixel photo. Each limb and point is
blended only inside its own small bounding rectangle: the cost grows with the people drawn, not with
the image (a full-image blend per limb took over a second per person on a 12 MP photo).
"""

from __future__ import annotations

import cv2
import numpy as np

from hgpose.keypoints import KEYPOINT_NAMES, SKELETON

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


def _blend(image: np.ndarray, rect, draw, alpha: float) -> None:
    """Blend what draw(canvas, x0, y0) paints (in its colour, anti-aliased) into `image` at opacity
    alpha, touching only rect = (x0, y0, x1, y1) clipped to the image: a copy of that rectangle is
    painted and mixed back (pixels it left alone mix to themselves)."""
    height, width = image.shape[:2]
    x0, y0 = max(0, int(rect[0])), max(0, int(rect[1]))
    x1, y1 = min(width, int(rect[2])), min(height, int(rect[3]))
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1]
    canvas = region.copy()
    draw(canvas, x0, y0)
    cv2.addWeighted(canvas, alpha, region, 1.0 - alpha, 0.0, dst=region)


def _blend_line(image: np.ndarray, a, b, width: int, colour, alpha: float) -> None:
    def draw(canvas, x0, y0):
        cv2.line(canvas, _fixed(a[0] - x0, a[1] - y0), _fixed(b[0] - x0, b[1] - y0), colour, width, cv2.LINE_AA,
                 _SHIFT)

    _blend(image, _around((a, b), width + 1), draw, alpha)


def _blend_disc(image: np.ndarray, centre, radius: int, colour, alpha: float) -> None:
    def draw(canvas, x0, y0):
        cv2.circle(canvas, _fixed(centre[0] - x0, centre[1] - y0), radius << _SHIFT, colour, -1, cv2.LINE_AA, _SHIFT)

    _blend(image, _around((centre,), radius + 1), draw, alpha)


def _around(points, margin: float) -> tuple[int, int, int, int]:
    """The integer rectangle holding points (x, y) with `margin` pixels to spare."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (int(np.floor(min(xs) - margin)), int(np.floor(min(ys) - margin)),
            int(np.ceil(max(xs) + margin)) + 1, int(np.ceil(max(ys) + margin)) + 1)


def default_thickness(shape) -> int:
    """Line width for an image (the explore figures' crops): one pixel per 250 of its longer side."""
    return max(1, int(round(max(shape[:2]) / 250)))


def person_thickness(size: float) -> int:
    """Line width for a person `size` pixels tall or wide: 1 px up to about 150 px, then growing."""
    return max(1, int(round(size / 100)))


def _person_size(person: np.ndarray, shown: np.ndarray, box) -> float:
    if box is not None:
        return float(max(box[2], box[3]))
    if not shown.any():
        return 0.0
    points = person[shown, :2]
    return float((points.max(axis=0) - points.min(axis=0)).max())


def _draw_label(image: np.ndarray, text: str, box, size: float) -> None:
    """`text` in white on a dark patch at the top left of box (above it when there is room)."""
    scale = float(np.clip(size / 300, 0.3, 3.0))
    weight = max(1, int(round(scale * 1.5)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
    pad = max(2, weight)
    x = int(np.clip(round(box[0]), 0, max(0, image.shape[1] - text_w - 2 * pad)))
    top = int(round(box[1])) - text_h - baseline - 2 * pad
    y = top if top >= 0 else max(0, int(round(box[1])))  # inside the box when it touches the top edge
    cv2.rectangle(image, (x, y), (x + text_w + 2 * pad, y + text_h + baseline + 2 * pad), (20, 20, 20), -1)
    cv2.putText(image, text, (x + pad, y + pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                weight, cv2.LINE_AA)


def draw_pose(image: np.ndarray, keypoints, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
              thickness: int | None = None, truth=None, boxes=None, labels=None) -> np.ndarray:
    """A copy of RGB `image` (H, W, 3) uint8 with every person's skeleton drawn.

    keypoints: (P, 17, 3) or (17, 3) x, y, confidence in image coordinates (a confidence of 1 draws
    ground truth at full opacity). thickness: line width for everyone (default: from each person's
    size). boxes: optional (P, 4) x, y, w, h person boxes, drawn and used for the size. labels:
    optional P texts drawn at each box's corner (e.g. "#3 0.71": the index in the results, the
    score). truth: optional (P, 17, 3) x, y, COCO visibility drawn as small white rings at labelled
    points, to compare with the prediction.
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, len(KEYPOINT_NAMES), 3)
    boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for index, person in enumerate(keypoints):
        box = boxes[index] if boxes is not None and index < len(boxes) else None
        shown = np.isfinite(person).all(axis=1) & (person[:, 2] >= min_confidence)
        size = _person_size(person, shown, box)
        width = thickness or person_thickness(size)
        radius = width + 1 if thickness else max(2, int(round(width * 1.5)))
        if box is not None:
            corner, far = _fixed(box[0] + 0.5, box[1] + 0.5), _fixed(box[0] + box[2] - 0.5, box[1] + box[3] - 0.5)
            cv2.rectangle(out, corner, far, TRUTH_COLOUR, max(1, width // 2), cv2.LINE_AA, _SHIFT)
        opacity = np.clip(0.35 + 0.65 * person[:, 2], 0.35, 1.0)
        for (a, b), colour in zip(LIMBS, LIMB_COLOURS):
            if shown[a] and shown[b]:
                _blend_line(out, person[a, :2], person[b, :2], width, colour, float(min(opacity[a], opacity[b])))
        for k in np.flatnonzero(shown):
            _blend_disc(out, person[k, :2], radius, POINT_COLOURS[k], float(opacity[k]))
        if labels is not None and index < len(labels):
            _draw_label(out, labels[index], box if box is not None else (0, 0, 0, 0), max(size, 100))
    if truth is not None:
        for person in np.asarray(truth, dtype=np.float64).reshape(-1, len(KEYPOINT_NAMES), 3):
            shown = person[:, 2] > 0
            ring_width = thickness or person_thickness(_person_size(person, shown, None))
            ring = (ring_width + 2) << _SHIFT
            for x, y, v in person:
                if v > 0:
                    cv2.circle(out, _fixed(x, y), ring, TRUTH_COLOUR, max(1, ring_width // 2), cv2.LINE_AA, _SHIFT)
    return out
