"""COCO person keypoints: names, skeleton, the left/right flip pairs and permutation, exactly as in the
official person_keypoints_*.json files."""

from __future__ import annotations

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# 1-based keypoint index pairs, in the order of the official person category.
SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)

# 0-based (left, right) index pairs: horizontal flipping swaps these.
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))



def flip_permutation(num_keypoints: int = NUM_KEYPOINTS) -> list[int]:
    """perm[j] = the left/right twin of keypoint j after a horizontal flip (j itself for the nose, and
    for every joint of a non-COCO layout)."""
    perm = list(range(num_keypoints))
    if num_keypoints == NUM_KEYPOINTS:
        for left, right in FLIP_PAIRS:
            perm[left], perm[right] = right, left
    return perm


def twin_of(joint: int, num_keypoints: int = NUM_KEYPOINTS) -> int | None:
    """The left/right twin of a keypoint (left_wrist <-> right_wrist), None for the nose."""
    twin = flip_permutation(num_keypoints)[joint]
    return None if twin == joint else twin


PERSON_CATEGORY: dict = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [list(pair) for pair in SKELETON],
}

COCO_PERSON_ID = PERSON_CATEGORY["id"]


def person_categories(categories) -> list[dict]:
    """The categories of a COCO file named "person" (in file order)."""
    return [c for c in categories if isinstance(c, dict) and c.get("name") == "person"]


def person_category_id(categories) -> int:
    """The id of a COCO file's person category: the first category named "person", else COCO's 1.
    The one rule every reader of annotation, results and box files uses."""
    persons = person_categories(categories)
    found = persons[0].get("id") if persons else None
    return found if isinstance(found, int) and not isinstance(found, bool) else COCO_PERSON_ID
