"""The COCO person-keypoint index: which instances a split holds, as flat numpy arrays.

A person_keypoints_*.json file is parsed once with json.load and turned column by column into
numpy arrays; the parsed JSON is dropped before returning, so memory afterwards is proportional to
the kept instances (the official train2017 file: 262k annotations, about 150k kept). numpy arrays
also share between DataLoader worker processes by fork copy-on-write, unlike lists of dicts.

Dataset-level problems (missing files, malformed JSON, wrong schema, no person category) raise a
one-line UserError naming the file. Sample-level problems drop the instance and are counted by reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hgpose.data.images import MAX_IMAGE_PIXELS, check_image_folder
from hgpose.data.index_cache import load_index  # parsed once per file version, then loaded
from hgpose.data.person_index import PersonIndex
from hgpose.keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS, person_categories
from hgpose.runtime.files import UserError, read_json

# The order here is the order of precedence: an instance is counted under its first reason.
DROP_REASONS = (
    "not person",
    "crowd",
    "no keypoints",
    "unknown image id",
    "unsafe file name",
    "image too large",
    "bad image size",
    "bad bbox",
    "bad keypoints",
)


def annotation_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"person_keypoints_{split}.json"


def load_split(root: str | Path, split: str, verbose: bool = False, check_images: bool = True) -> PersonIndex:
    """Index of root/annotations/person_keypoints_<split>.json with images in root/<split>/.

    check_images: stop with a UserError when root/<split>/ cannot hold the file's images (see
    check_split_images); prepare, train, evaluate and explore all open their splits here.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: data root not found (expected annotations/ and image folders in it)")
    index = load_annotation_file(annotation_path(root, split), root / split, split, verbose)
    if check_images:
        check_split_images(index)
    return index


def check_split_images(index: PersonIndex) -> None:
    """A split whose image folder is missing, empty, misplaced or holds other images is a UserError
    naming the folder; a few bad files are not (they are counted skips when read). Reads a few headers."""
    check_image_folder(index.image_dir, index.file_names, index.image_sizes, index.annotation_file)


def load_annotation_file(annotation_file: str | Path, image_dir: str | Path, split: str,
                         verbose: bool = False) -> PersonIndex:
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise UserError(f"{annotation_file}: annotation file not found")
    def parse() -> PersonIndex:
        return parse_annotations(read_annotation_json(annotation_file), annotation_file, Path(image_dir), split)

    try:
        index = load_index(annotation_file, image_dir, split, parse)
    except RecursionError:
        raise UserError(f"{annotation_file}: JSON nested too deeply to read") from None
    except MemoryError:
        raise UserError(f"{annotation_file}: too large to load into memory") from None
    if verbose:
        print(index.describe(), file=sys.stderr)
    return index


def read_annotation_json(annotation_file: Path):
    """json.load without the segmentation masks, which hgpose never uses.

    They are most of the official train2017 file (450 MB, mostly polygon numbers): cutting them out
    of the text first makes loading about 3x faster and leaves a far smaller heap behind. Anything
    unexpected falls back to the plain parser, which also words the error for malformed JSON.
    A file too large for the memory available is refused from its size, before any of it is read.
    """
    check_fits_in_memory(annotation_file)
    try:
        return json.loads(_without_segmentation(annotation_file.read_bytes()))
    except RecursionError:
        raise UserError(f"{annotation_file}: JSON nested too deeply to read") from None
    except MemoryError:
        raise UserError(f"{annotation_file}: too large to load into memory") from None
    except (OSError, ValueError):
        pass
    try:
        return read_json(annotation_file, "annotation file")  # words the error for malformed JSON
    except ValueError as exc:  # not a JSON syntax error: e.g. an integer of more than 4300 digits
        raise UserError(f"{annotation_file}: unreadable JSON ({str(exc).splitlines()[0][:120]})") from None


# Peak memory of reading an annotation file, per byte of it: the bytes, their copy without
# segmentation and the parsed lists. Measured 3.3x on a 124 MB file of keypoint-only annotations
# (random coordinates, no segmentation), 1.0x on one with COCO-like polygons.
MEMORY_PER_FILE_BYTE = 4


def check_fits_in_memory(path: Path, available: int | None = None) -> None:
    """Refuse a file whose parse would not fit in the memory available now (MemAvailable, or a
    cgroup's limit when lower): rather one line than a machine swapping, or the OOM killer
    ending the process with no message at all."""
    size = path.stat().st_size
    available = available_memory() if available is None else available
    if available is None or size * MEMORY_PER_FILE_BYTE <= available:
        return
    raise UserError(f"{path}: too large to load here: {size / 1e9:.2f} GB, and reading it takes about "
                    f"{MEMORY_PER_FILE_BYTE}x its size in memory; {available / 1e9:.2f} GB is available, so the "
                    f"limit is {available / MEMORY_PER_FILE_BYTE / 1e9:.2f} GB (free memory or use a larger machine)")


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping: the kernel's MemAvailable, or what is
    left under a cgroup v2 memory limit when that is less; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


_SEGMENTATION_KEY = b'"segmentation":'


def _without_segmentation(raw: bytes) -> bytes:
    """Replace each "segmentation" value, polygons or RLE, by 0 (byte searches only, no parsing).

    A value is cut only when it is `[` ... the first `]]` with no quote inside (polygons) or `{` ... the
    first `}` with no `{` inside (RLE). The key cannot match inside a string, where quotes are escaped.
    Any cut that was not exactly one value unbalances the brackets, so json.loads fails and the
    caller falls back to parsing the original text.
    """
    view = memoryview(raw)
    out, pos = [], 0
    while (key := raw.find(_SEGMENTATION_KEY, pos)) >= 0:
        start = key + len(_SEGMENTATION_KEY)
        while raw[start : start + 1].isspace():
            start += 1
        end = -1
        if raw.startswith(b"[", start):
            end = raw.find(b"]]", start) + 2
            if end < 2 or raw.find(b'"', start, end) >= 0:
                end = -1
        elif raw.startswith(b"{", start):
            end = raw.find(b"}", start) + 1
            if end < 1 or raw.find(b"{", start + 1, end) >= 0:
                end = -1
        out.append(view[pos:start])
        if end >= 0:
            out.append(b"0")
        pos = end if end >= 0 else start
    out.append(view[pos:])
    return b"".join(out)


def build_splits(
    root: str | Path,
    train_split: str = "train2017",
    test_split: str = "val2017",
    val_split: str | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, PersonIndex]:
    """{"train", "val", "test"} indexes. Without val_split the validation set is a seeded,
    image-level held-out part of train_split (no image's people straddle train and val)."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    full = load_split(root, train_split, verbose)
    test = load_split(root, test_split, verbose)
    if val_split is not None:
        return {"train": full, "val": load_split(root, val_split, verbose), "test": test}
    in_val = held_out_mask(full.image_ids, val_fraction, seed)
    train, val = full.subset(~in_val), full.subset(in_val)
    if verbose:
        print(
            f"validation: {len(np.unique(val.image_ids))} images ({len(val)} instances) held out of "
            f"{train_split} (val_fraction {val_fraction}, seed {seed}); training on {len(train)} instances",
            file=sys.stderr,
        )
    return {"train": train, "val": val, "test": test}


def held_out_mask(image_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per instance: whether its image is among the `fraction` of distinct images held out.

    Images are ranked by a seeded integer hash of their id, so the choice depends only on the seed
    and the ids (not on numpy's random stream, file order or instance counts) and is reproducible.
    """
    images = np.unique(image_ids)
    n_val = int(round(fraction * len(images)))
    if fraction > 0 and n_val == 0 and len(images) > 1:
        n_val = 1
    ranked = images[np.argsort(_splitmix64(images.astype(np.uint64) ^ np.uint64(seed * 0x9E3779B1)), kind="stable")]
    return np.isin(image_ids, ranked[:n_val])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# --- parsing ---------------------------------------------------------------------------------------


def parse_annotations(data, annotation_file: Path, image_dir: Path, split: str) -> PersonIndex:
    """Vectorised filter of a parsed COCO keypoint file into a PersonIndex."""

    def wrong_schema(problem: str) -> UserError:
        return UserError(f"{annotation_file}: wrong schema: {problem}")

    if not isinstance(data, dict):
        raise wrong_schema("the top level is not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise wrong_schema(f"no '{key}' list")
    persons = person_categories(data["categories"])
    if not persons:
        raise UserError(f"{annotation_file}: no person category among its {len(data['categories'])} categories")
    person_id = persons[0].get("id")
    if not _is_int64(person_id):
        raise wrong_schema(f"the person category's 'id' is {person_id!r}, expected an integer")
    check_keypoint_names(persons[0], annotation_file)

    images = _image_table(data["images"], wrong_schema)
    anns = data["annotations"]
    try:
        category = np.array([a["category_id"] for a in anns], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise wrong_schema(_first_problem(anns, "annotation", ANNOTATION_FIELDS[:1])) from None
    people = [a for a, is_person in zip(anns, category == person_id) if is_person]
    table = _annotation_table(people, wrong_schema)
    index = _filter(table, images, len(anns) - len(people), annotation_file, image_dir, split)
    index.category_id = int(person_id)
    return index


def check_keypoint_names(category: dict, annotation_file: Path) -> None:
    """A person category that lists keypoint names must list COCO's 17, in COCO's order: hgpose's
    model, flip pairs and skeleton assume them. A category without the list is taken as COCO's.
    A longer list that begins with COCO's 17 in order is accepted with a note: sets such as HumanArt
    name 21 points but annotate COCO's 17 (their `keypoints` arrays hold 17 triplets; the schema
    check refuses any that hold more)."""
    names = category.get("keypoints")
    if names is None or names == list(KEYPOINT_NAMES):
        return
    if not isinstance(names, list):
        raise UserError(f"{annotation_file}: the person category's 'keypoints' is not a list of names")
    coco = len(KEYPOINT_NAMES)
    if len(names) > coco and names[:coco] == list(KEYPOINT_NAMES):
        print(f"note: {annotation_file}: the person category names {len(names)} keypoints; its first {coco} are "
              f"COCO's, in COCO's order, and are the ones used ({', '.join(map(str, names[coco:]))} are not)",
              file=sys.stderr)
        return
    if len(names) != coco:
        raise UserError(f"{annotation_file}: the person category has {len(names)} keypoints, not COCO's "
                        f"{coco}; hgpose trains COCO's keypoint set only")
    first = next(i for i, (a, b) in enumerate(zip(names, KEYPOINT_NAMES)) if a != b)
    raise UserError(f"{annotation_file}: the person category's keypoints are not COCO's: keypoint {first + 1} "
                    f"(counting from 1) is {names[first]!r}, COCO's is {KEYPOINT_NAMES[first]!r}; hgpose trains "
                    "COCO's keypoint set only")


def _is_int64(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -(2**63) <= x < 2**63


def _is_number(x) -> bool:
    if isinstance(x, int) and not isinstance(x, bool):
        return abs(x) < 2**1000  # a bigger integer does not fit a float
    return x is None or isinstance(x, float)


def _is_numbers(n: int):
    return lambda x: isinstance(x, list) and len(x) == n and all(_is_number(v) for v in x)


IMAGE_FIELDS = (
    ("id", _is_int64, "a 64-bit integer"),
    ("file_name", lambda x: isinstance(x, str), "a string"),
    ("width", _is_number, "a number"),
    ("height", _is_number, "a number"),
)
ANNOTATION_FIELDS = (
    ("category_id", _is_int64, "a 64-bit integer"),
    ("id", _is_int64, "a 64-bit integer"),
    ("image_id", _is_int64, "a 64-bit integer"),
    ("bbox", _is_numbers(4), "a list of 4 numbers"),
    ("keypoints", _is_numbers(3 * NUM_KEYPOINTS), f"a list of {3 * NUM_KEYPOINTS} numbers"),
)


def _first_problem(items: list, what: str, fields) -> str:
    """The slow path, run only after the vectorised one failed: name the first offending entry."""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return f"{what} #{i} is not an object"
        label = f"{what} id {item['id']!r}" if "id" in item else f"{what} #{i}"
        for name, check, expected in fields:
            if name not in item:
                return f"{label} has no '{name}'"
            if not check(item[name]):
                shown = repr(item[name])
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                if isinstance(item[name], list):
                    shown = f"a list of {len(item[name])} items"
                return f"{label}: '{name}' is {shown}, expected {expected}"
    return f"unreadable {what} entries"


def _image_table(images: list, wrong_schema) -> dict:
    try:
        ids = np.array([im["id"] for im in images], dtype=np.int64)
        width = np.array([im["width"] for im in images], dtype=np.float64)
        height = np.array([im["height"] for im in images], dtype=np.float64)
        names = [im["file_name"] for im in images]
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except (KeyError, TypeError, ValueError, OverflowError):
        raise wrong_schema(_first_problem(images, "image", IMAGE_FIELDS)) from None
    order = np.argsort(ids, kind="stable")
    repeated = ids[order][1:][np.diff(ids[order]) == 0]
    if len(repeated):
        raise wrong_schema(f"image id {repeated[0]} appears more than once")
    return {"ids": ids, "order": order, "width": width, "height": height, "names": names}


def _annotation_table(anns: list, wrong_schema) -> dict:
    n = len(anns)
    try:
        table = {
            "id": np.array([a["id"] for a in anns], dtype=np.int64),
            "image_id": np.array([a["image_id"] for a in anns], dtype=np.int64),
            "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            "num_keypoints": np.array([a.get("num_keypoints", -1) for a in anns], dtype=np.float64),
        }
        # bbox and keypoints only where they matter: crowd and zero-keypoint instances are dropped anyway
        candidates = np.flatnonzero(~table["crowd"] & (table["num_keypoints"] != 0))
        bbox = np.array([anns[i]["bbox"] for i in candidates], dtype=np.float64)
        kps = np.array([anns[i]["keypoints"] for i in candidates], dtype=np.float64)
        if bbox.shape[1:] != (4,) or kps.shape[1:] != (3 * NUM_KEYPOINTS,):
            if len(candidates):
                raise ValueError
            bbox, kps = bbox.reshape(0, 4), kps.reshape(0, 3 * NUM_KEYPOINTS)
    except (KeyError, TypeError, ValueError, OverflowError):
        raise wrong_schema(_first_problem(anns, "annotation", ANNOTATION_FIELDS[1:])) from None
    table["bbox"] = np.full((n, 4), np.nan)
    table["bbox"][candidates] = bbox
    table["keypoints"] = np.zeros((n, NUM_KEYPOINTS, 3))
    table["keypoints"][candidates] = kps.reshape(-1, NUM_KEYPOINTS, 3)
    return table


def is_safe_file_name(name: str) -> bool:
    """A relative path that stays inside the image folder: no absolute path, drive or `..` part.
    (Plain string tests: pathlib is too slow for the 118k names of train2017.)"""
    if not name or "\0" in name or "\\" in name or name.startswith("/") or name[1:2] == ":":
        return False
    return ".." not in name.split("/")


def _filter(table: dict, images: dict, not_person: int, annotation_file: Path, image_dir: Path, split: str):
    n = len(table["id"])
    reason = np.zeros(n, dtype=np.int8)  # 0 = kept, else 1 + position in DROP_REASONS

    def drop(name: str, mask: np.ndarray) -> None:
        reason[(reason == 0) & mask] = DROP_REASONS.index(name) + 1

    kps = table["keypoints"]
    x, y, v = kps[..., 0], kps[..., 1], kps[..., 2]
    labelled = v > 0  # NaN compares False
    drop("crowd", table["crowd"])
    drop("no keypoints", (table["num_keypoints"] == 0) | ~labelled.any(axis=1))

    # each annotation's image, by binary search in the sorted image ids; -1 (unknown) picks a sentinel
    sorted_ids = images["ids"][images["order"]]
    at = np.searchsorted(sorted_ids, table["image_id"])
    found = at < len(sorted_ids)
    found[found] = sorted_ids[at[found]] == table["image_id"][found]
    image_pos = np.full(n, -1, dtype=np.int64)
    image_pos[found] = images["order"][at[found]]
    drop("unknown image id", ~found)

    width, height = np.append(images["width"], np.nan), np.append(images["height"], np.nan)
    unsafe = np.array([not is_safe_file_name(name) for name in images["names"]] + [False], dtype=bool)
    with np.errstate(invalid="ignore"):
        too_large = width * height > MAX_IMAGE_PIXELS
        bad_size = ~(np.isfinite(width) & np.isfinite(height) & (width > 0) & (height > 0))
    drop("unsafe file name", unsafe[image_pos])
    drop("image too large", too_large[image_pos])
    drop("bad image size", bad_size[image_pos])
    W, H = width[image_pos], height[image_pos]

    bx, by, bw, bh = table["bbox"].T
    with np.errstate(invalid="ignore"):
        x0, y0 = np.clip(bx, 0, W), np.clip(by, 0, H)
        x1, y1 = np.clip(bx + bw, 0, W), np.clip(by + bh, 0, H)
        bad_bbox = ~np.isfinite(table["bbox"]).all(axis=1) | (bw < 0) | (bh < 0) | ~(x1 > x0) | ~(y1 > y0)
    drop("bad bbox", bad_bbox)

    bad_values = ~np.isin(v, (0, 1, 2)) | (labelled & ~(np.isfinite(x) & np.isfinite(y)))
    with np.errstate(invalid="ignore"):
        outside = labelled & ((x < 0) | (x > W[:, None]) | (y < 0) | (y > H[:, None]))
    # a labelled keypoint outside its image is ignored (v = 0); with none left the instance goes
    drop("bad keypoints", bad_values.any(axis=1) | ~(labelled & ~outside).any(axis=1))

    keep = reason == 0
    kept_kps = kps[keep].astype(np.float32)
    kept_outside = outside[keep]
    kept_kps[..., 2][kept_outside] = 0
    kept_kps[kept_kps[..., 2] == 0] = 0  # unlabelled: (0, 0, 0), never NaN, so targets stay finite

    used_images, image_index = np.unique(image_pos[keep], return_inverse=True)
    counts = np.bincount(reason, minlength=len(DROP_REASONS) + 1)
    drops = {"not person": not_person}
    drops.update({name: int(counts[i + 1]) for i, name in enumerate(DROP_REASONS) if name != "not person"})
    return PersonIndex(
        annotation_file=annotation_file,
        image_dir=image_dir,
        split=split,
        rows=np.arange(int(keep.sum()), dtype=np.int64),
        image_ids=table["image_id"][keep],
        ann_ids=table["id"][keep],
        image_index=image_index.astype(np.int32).reshape(-1),
        file_names=[images["names"][i] for i in used_images],
        image_sizes=np.stack([width[used_images], height[used_images]], axis=1).astype(np.int64).reshape(-1, 2),
        bboxes=np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[keep].astype(np.float32).reshape(-1, 4),
        keypoints=kept_kps.reshape(-1, NUM_KEYPOINTS, 3),
        drops=drops,
        ignored_keypoints=int(kept_outside.sum()),
    )
