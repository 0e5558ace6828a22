"""Person crops and the coordinate frames they connect. The pixel convention lives here, once.

Convention:
- *Image* coordinates (COCO bboxes and keypoints) are continuous with pixel (i, j) covering
  [i, i+1) x [j, j+1): its centre is at (i + 0.5, j + 0.5). A bbox [x, y, w, h] spans x..x+w.
- *Input* and *heatmap* coordinates are "pixel-centre" coordinates: pixel j of the network input or
  of a heatmap has its centre at coordinate j, so the argmax index of a heatmap is a coordinate.
  Heatmap pixel j covers input pixels 4j..4j+3, so input u = 4 * (h + 0.5) - 0.5.

A crop is a square box (x0, y0, side) in image coordinates, warped onto input_size x input_size
pixels; the same box with heatmap_size maps image points to heatmap points and back.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_PADDING = 1.25  # crop side = 1.25 x max(bbox w, h), as in Newell et al.


def crop_box_from_bbox(bbox, padding: float = CROP_PADDING) -> np.ndarray:
    """Square crop (x0, y0, side) centred on a COCO bbox [x, y, w, h]; works on (..., 4) arrays."""
    bbox = np.asarray(bbox, dtype=np.float64)
    x, y, w, h = np.moveaxis(bbox, -1, 0)
    side = padding * np.maximum(w, h)
    cx, cy = x + w / 2, y + h / 2
    return np.stack([cx - side / 2, cy - side / 2, side], axis=-1)


def image_to_frame(points, box, frame_size: int) -> np.ndarray:
    """Image points (..., 2) to pixel-centre coordinates of a frame_size x frame_size crop of `box`."""
    points = np.asarray(points, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    origin, scale = box[..., None, :2], frame_size / box[..., None, 2:3]
    return (points - origin) * scale - 0.5


def frame_to_image(points, box, frame_size: int) -> np.ndarray:
    """Inverse of image_to_frame: pixel-centre crop coordinates back to image coordinates."""
    points = np.asarray(points, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    origin, scale = box[..., None, :2], box[..., None, 2:3] / frame_size
    return (points + 0.5) * scale + origin


def crop_matrix(box, input_size: int) -> np.ndarray:
    """2x3 affine taking OpenCV (pixel-centre) source coordinates to crop pixel coordinates."""
    x0, y0, side = (float(v) for v in box)
    k = input_size / side
    # image pixel-centre p has continuous coordinate p + 0.5; see image_to_frame
    return np.array([[k, 0.0, (0.5 - x0) * k - 0.5], [0.0, k, (0.5 - y0) * k - 0.5]], dtype=np.float64)


def crop_image(image: np.ndarray, box, input_size: int) -> np.ndarray:
    """Bilinear warp of `box` onto input_size x input_size, zeros outside the image."""
    return cv2.warpAffine(
        image,
        crop_matrix(box, input_size),
        (input_size, input_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def inside_frame(points, frame_size: int) -> np.ndarray:
    """Whether pixel-centre points (..., 2) fall on the frame's area [-0.5, size - 0.5)^2."""
    points = np.asarray(points)
    return np.all((points >= -0.5) & (points < frame_size - 0.5), axis=-1)
