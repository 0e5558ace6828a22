"""Time to draw prediction overlays on a large photo, per person, against the network's time.

Draws P people (keypoints at confidence 0.9, boxes and labels, as `hgpose predict` does) on a
W x H image (default 4000 x 3000, 12 MP) with hgpose.draw.draw_pose, and, for comparison, with the
earlier approach of blending each limb and point through a full-image mask. Also prints the JPEG
encoding of the overlay and one forward pass of the seed's model on P crops. Usage:

    python benchmarks/overlay.py [--width 4000] [--height 3000] [--people 4] [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from hgpose.draw import LIMB_COLOURS, LIMBS, POINT_COLOURS, draw_pose
from hgpose.model.hourglass import ModelConfig, build_model, to_model_input


def people_on(width: int, height: int, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(P, 17, 3) keypoints inside P boxes side by side, each person most of the image's height."""
    box_w = width / count
    boxes = np.array([[i * box_w + 0.1 * box_w, 0.1 * height, 0.8 * box_w, 0.8 * height] for i in range(count)])
    keypoints = np.zeros((count, 17, 3))
    for p, (x, y, w, h) in enumerate(boxes):
        keypoints[p, :, 0] = x + rng.uniform(0, w, 17)
        keypoints[p, :, 1] = y + np.linspace(0, h, 17)
        keypoints[p, :, 2] = 0.9
    return keypoints, boxes


def reference_draw(image: np.ndarray, keypoints: np.ndarray, thickness: int) -> np.ndarray:
    """The earlier overlay: every limb and point blended through a mask the size of the whole image."""
    out = image.copy()

    def paint(draw, colour, alpha):
        mask = np.zeros(out.shape[:2], np.uint8)
        draw(mask)
        ys, xs = np.nonzero(mask)
        weight = (mask[ys, xs] * (alpha / 255.0))[:, None]
        out[ys, xs] = np.round(weight * np.asarray(colour) + (1 - weight) * out[ys, xs]).astype(np.uint8)

    for person in keypoints:
        for (a, b), colour in zip(LIMBS, LIMB_COLOURS):
            pa, pb = tuple(int(v) for v in person[a, :2]), tuple(int(v) for v in person[b, :2])
            paint(lambda m, pa=pa, pb=pb: cv2.line(m, pa, pb, 255, thickness, cv2.LINE_AA), colour, 0.9)
        for k in range(17):
            centre = tuple(int(v) for v in person[k, :2])
            paint(lambda m, c=centre: cv2.circle(m, c, thickness + 1, 255, -1, cv2.LINE_AA), POINT_COLOURS[k], 0.9)
    return out


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the earlier full-image approach (slow: about a second per person)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    keypoints, boxes = people_on(args.width, args.height, args.people, rng)
    labels = [f"#{i} 0.90" for i in range(args.people)]
    megapixels = args.width * args.height / 1e6
    print(f"{args.width}x{args.height} image ({megapixels:.1f} MP), {args.people} people, best of {args.repeats}")

    drawn = None

    def draw():
        nonlocal drawn
        drawn = draw_pose(image, keypoints, boxes=boxes, labels=labels)

    seconds = best_of(args.repeats, draw)
    print(f"draw_pose (boxes, labels, size-aware strokes): {seconds * 1e3 / args.people:8.1f} ms per person "
          f"({seconds * 1e3:.1f} ms in all, image copy included)")
    if args.reference:
        thickness = max(1, round(max(args.width, args.height) / 250))
        seconds = best_of(args.repeats, lambda: reference_draw(image, keypoints, thickness))
        print(f"earlier full-image blends:                     {seconds * 1e3 / args.people:8.1f} ms per person")
    seconds = best_of(args.repeats, lambda: cv2.imencode(".jpg", drawn[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]))
    print(f"JPEG encoding of the overlay:                  {seconds * 1e3:8.1f} ms per image")
    model = build_model(ModelConfig()).eval()
    crops = torch.randint(0, 256, (args.people, 3, 256, 256), dtype=torch.uint8)
    with torch.inference_mode():
        seconds = best_of(args.repeats, lambda: model(to_model_input(crops)))
    name = f"the seed's network on {args.people} crops of 256 px:"
    print(f"{name:47s}{seconds * 1e3 / args.people:8.1f} ms per person ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
