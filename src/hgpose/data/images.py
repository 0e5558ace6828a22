"""Reading an image file safely, and cropping people from it exactly as training does.

Every reader of image files (the dataset, the prepared cache, evaluate, explore and predict) goes
through `crop_file`, so a person is cropped identically everywhere, large people included (their
JPEG is decoded at reduced size, see `_reduction`). A file that cannot be used raises nothing: the
result carries a one-line problem, so one bad file is a counted skip, never a stopped run.

Safety, before any pixel is decoded: only regular files are opened (a FIFO or device would hang or
never end), at most MAX_IMAGE_BYTES are read, the format and size come from the header (Pillow
parses headers lazily), formats Pillow cannot identify are refused (their size cannot be checked
first), and images over MAX_IMAGE_PIXELS are refused, so a small file never decodes to gigabytes.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hgpose.data.transforms import crop_box_from_bbox, crop_image
from hgpose.runtime.files import UserError

# Larger images are refused rather than decoded (decompression bombs; COCO's largest is 0.4 MP).
MAX_IMAGE_PIXELS = 100_000_000
# The most bytes read from one image file: 100 MP of uncompressed 8-bit RGB, plus headers.
MAX_IMAGE_BYTES = 320 * 1024 * 1024
# Formats OpenCV decodes whose size Pillow reads from the header (MPO: phone JPEGs with extra frames).
DECODED_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"}
JPEG_FORMATS = {"JPEG", "MPO"}
# A file this much (pixels, each side) off the annotation's size is used anyway, with a warning.
SIZE_TOLERANCE = 1

_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageProblem(Exception):
    """Why one image file cannot be used, in a few words ("missing file", "truncated JPEG ...")."""


@dataclass
class ImageHeader:
    width: int  # as stored (before any EXIF orientation)
    height: int
    format: str  # Pillow's name: JPEG, PNG, ...
    orientation: int = 1  # EXIF orientation tag, 1 (as stored) .. 8


@dataclass
class CropResult:
    """What crop_file made of one file: crops, or the reason there are none."""

    crops: list[np.ndarray] | None  # (3, S, S) uint8 RGB, one per box
    problem: str | None = None  # set when the file cannot be used
    warning: str | None = None  # set when it was used despite a small mismatch (e.g. a pixel off)
    size: tuple[int, int] | None = None  # (width, height) of the image the boxes refer to
    boxes: np.ndarray | None = None  # (k, 3) the square crop boxes used


def read_image_bytes(path, max_bytes: int | None = None, head: int | None = None) -> bytes:
    """The bytes of a regular file of at most max_bytes (default MAX_IMAGE_BYTES); ImageProblem otherwise.
    head: read only the file's first `head` bytes (enough for its header)."""
    max_bytes = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageProblem("missing file") from None
    except OSError as exc:
        raise ImageProblem(f"unreadable ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageProblem("not a regular file")
        if info.st_size > max_bytes:
            raise ImageProblem(f"file too large ({info.st_size} bytes, at most {max_bytes} read)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1 if head is None else min(head, max_bytes))
    except OSError as exc:
        raise ImageProblem(f"unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise ImageProblem(f"file too large (over {max_bytes} bytes)")
    return data


def read_header(data: bytes, orientation: bool = False, whole_file: bool = True) -> ImageHeader:
    """Format, stored size (and the EXIF orientation when asked) without decoding pixels.
    whole_file=False: data is only the file's start, so a JPEG's end is not looked for."""
    if not data:
        raise ImageProblem("empty file")
    if whole_file and data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise ImageProblem("truncated JPEG (no end-of-image marker after its scan data)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: our limit is checked below
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(int(image.width), int(image.height), str(image.format))
                if orientation:
                    header.orientation = _orientation_tag(image)
    except Image.DecompressionBombError:
        raise ImageProblem("image too large (over Pillow's limit)") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem("not an image of a known format") from None
    except Exception as exc:  # any parser failure on a hostile header is this file's problem only
        raise ImageProblem(f"corrupt image header ({type(exc).__name__})") from None
    if header.format not in DECODED_FORMATS:
        raise ImageProblem(f"unsupported image format {header.format}")
    if header.width < 1 or header.height < 1:
        raise ImageProblem(f"image is {header.width}x{header.height}")
    if header.width * header.height > MAX_IMAGE_PIXELS:
        raise ImageProblem(f"image too large ({header.width}x{header.height})")
    return header


def _orientation_tag(image) -> int:
    try:
        tag = int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: show the pixels as stored
        return 1
    return tag if 1 <= tag <= 8 else 1


def jpeg_is_complete(data: bytes) -> bool:
    """Whether an end-of-image marker follows the start of the scan data.

    Entropy-coded data never holds FF D9, so a JPEG cut short has none after its first scan; bytes
    after the marker (phone cameras append their own data there) do not matter. Markers before the
    scan are skipped by their length, so an EXIF thumbnail's end marker is not mistaken for ours.
    """
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
        elif marker == 0xDA:
            return data.find(b"\xff\xd9", i + 2) >= 0
        elif marker == 0xD9:
            return False  # end of image before any scan
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def decode(data: bytes, header: ImageHeader, factor: int = 1) -> np.ndarray:
    """BGR uint8 pixels as stored, at 1/factor scale (JPEG only); ImageProblem when they cannot be."""
    flags = _REDUCED_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except Exception as exc:  # OpenCV raises on some headers instead of returning None
        name = "OpenCV error" if isinstance(exc, cv2.error) else type(exc).__name__
        raise ImageProblem(f"cannot decode ({name})") from None
    if image is None:
        raise ImageProblem("corrupt image")
    expected = (-(-header.height // factor), -(-header.width // factor))
    if image.shape[:2] != expected:
        found = f"{image.shape[1] * factor}x{image.shape[0] * factor}"
        raise ImageProblem(f"decodes to about {found}, its header says {header.width}x{header.height}")
    return image


def apply_orientation(image: np.ndarray, tag: int) -> np.ndarray:
    """The upright view of stored pixels under EXIF orientation `tag` (as photo viewers show it)."""
    if tag == 2:
        image = image[:, ::-1]
    elif tag == 3:
        image = image[::-1, ::-1]
    elif tag == 4:
        image = image[::-1]
    elif tag == 5:
        image = image.swapaxes(0, 1)
    elif tag == 6:
        image = np.rot90(image, -1)
    elif tag == 7:
        image = np.rot90(image, 2).swapaxes(0, 1)
    elif tag == 8:
        image = np.rot90(image, 1)
    return np.ascontiguousarray(image)


def _upright_size(header: ImageHeader, upright: bool) -> tuple[int, int]:
    if upright and header.orientation in (5, 6, 7, 8):
        return header.height, header.width
    return header.width, header.height


def check_size(size: tuple[int, int], expected_size, extent=None) -> str | None:
    """Whether an image of `size` (width, height) can stand for the annotation's `expected_size`.

    None when they agree; a warning line when the file is at most SIZE_TOLERANCE pixels off each
    side and `extent` (the furthest x, y the annotation reaches, if given) still fits it (the image
    is then used as decoded); ImageProblem for anything further off.
    """
    mismatch = _size_mismatch(size, expected_size)
    if mismatch is None:
        return None
    off = max(abs(size[0] - int(expected_size[0])), abs(size[1] - int(expected_size[1])))
    fits = extent is None or (extent[0] <= size[0] and extent[1] <= size[1])
    if off > SIZE_TOLERANCE or not fits:
        raise ImageProblem(mismatch)
    return mismatch + " (used as decoded)"


HEADER_BYTES = 64 * 1024  # a file's first bytes read to find its size (JPEG: after EXIF, up to 64 KB)


def check_image_header(path, expected_size, extent=None) -> tuple[str | None, str | None]:
    """(problem, warning) for one image file from its header alone, decoding no pixel: what makes a
    file unusable before decoding (missing, not a regular file, not an image, too large, another
    size), and check_size's warning. A body that fails to decode is only found when decoded."""
    try:
        data = read_image_bytes(path, head=HEADER_BYTES)
        try:
            header = read_header(data, whole_file=False)
        except ImageProblem:
            if len(data) < HEADER_BYTES:  # that was the whole file
                raise
            header = read_header(read_image_bytes(path))  # a header beyond the first bytes
        return None, check_size((header.width, header.height), expected_size, extent)
    except ImageProblem as exc:
        return str(exc), None


def _size_mismatch(found: tuple[int, int], expected) -> str | None:
    """None when equal; the one-line difference otherwise."""
    if found == (int(expected[0]), int(expected[1])):
        return None
    return f"image is {found[0]}x{found[1]}, annotation says {int(expected[0])}x{int(expected[1])}"


def crop_file(path, boxes=None, input_size: int = 256, expected_size=None, *, bboxes=None,
              upright: bool = False, extent=None) -> CropResult:
    """Crops of people from one image file, exactly as training makes them; never raises for a bad file.

    boxes: (k, 3) square crop boxes (x0, y0, side), or bboxes: (k, 4) person boxes x, y, w, h (cropped
    with crop_box_from_bbox), or neither: the whole image as one person. expected_size: the (width,
    height) the annotation says; a file that many pixels off (SIZE_TOLERANCE) is used with a warning
    when `extent` (the furthest x, y the annotation reaches, if given) still fits it; more is a problem.
    upright: apply the EXIF orientation (a photo as viewers show it); otherwise the stored pixels, which
    COCO annotations refer to. The image is decoded once per JPEG reduction factor the boxes need.
    """
    try:
        return _crop_file(Path(path), boxes, int(input_size), expected_size, bboxes, upright, extent)
    except ImageProblem as exc:
        return CropResult(None, problem=str(exc))
    except Exception as exc:  # anything else a hostile file triggers in decoding or warping
        return CropResult(None, problem=f"cannot crop ({type(exc).__name__}: {exc})"[:200])


def _crop_file(path: Path, boxes, input_size: int, expected_size, bboxes, upright: bool, extent):
    data = read_image_bytes(path)
    header = read_header(data, orientation=upright)
    size = _upright_size(header, upright)
    warning = None if expected_size is None else check_size(size, expected_size, extent)
    if boxes is None:
        if bboxes is None:
            bboxes = [[0.0, 0.0, size[0], size[1]]]
        else:  # clipped as the dataset index clips them; a box wholly outside is cropped as given (zeros)
            given, bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4), clip_bboxes(bboxes, size)
            outside = ~(bboxes[:, 2:].min(axis=1) > 0)
            bboxes[outside] = given[outside]
        boxes = crop_box_from_bbox(np.asarray(bboxes, np.float64).reshape(-1, 4))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 3)
    is_jpeg = header.format in JPEG_FORMATS
    tag = header.orientation if upright else 1
    decoded: dict[int, np.ndarray] = {}
    crops = []
    for box in boxes:
        factor = _reduction(box[2], input_size) if is_jpeg else 1
        if factor not in decoded:
            decoded[factor] = decode(data, header, factor)
        # an upright crop is the stored crop of the same square, turned: exact at any reduction factor
        stored_box = _stored_box(box, tag, header.width, header.height)
        crop = apply_orientation(crop_image(decoded[factor], stored_box / factor, input_size), tag)
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[::-1]))  # HWC BGR -> CHW RGB
    return CropResult(crops, warning=warning, size=size, boxes=boxes)


def _stored_box(box: np.ndarray, tag: int, width: int, height: int) -> np.ndarray:
    """The square (x0, y0, side) in stored pixels that EXIF orientation `tag` shows as `box` upright;
    width, height: the stored image's size."""
    x0, y0, side = box
    x1, y1 = x0 + side, y0 + side
    corner = {
        1: (x0, y0), 2: (width - x1, y0), 3: (width - x1, height - y1), 4: (x0, height - y1),
        5: (y0, x0), 6: (y0, height - x1), 7: (width - y1, height - x1), 8: (width - y1, x0),
    }[tag]
    return np.array([corner[0], corner[1], side], np.float64)


def clip_bboxes(bboxes, size) -> np.ndarray:
    """(k, 4) person boxes x, y, w, h clipped to a (width, height) image, rounded to float32 as the
    dataset index stores them, so a box crops the same pixels here as in training. An empty result
    (w or h 0) means the box lies outside the image."""
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
    width, height = size
    x0, y0 = np.clip(bboxes[:, 0], 0, width), np.clip(bboxes[:, 1], 0, height)
    x1 = np.clip(bboxes[:, 0] + bboxes[:, 2], 0, width)
    y1 = np.clip(bboxes[:, 1] + bboxes[:, 3], 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32).astype(np.float64)


def read_image(path, upright: bool = False) -> np.ndarray:
    """The whole image as RGB uint8 (H, W, 3), checked as crop_file checks it; ImageProblem otherwise."""
    data = read_image_bytes(path)
    header = read_header(data, orientation=upright)
    image = decode(data, header)
    if upright:
        image = apply_orientation(image, header.orientation)
    return np.ascontiguousarray(image[:, :, ::-1])


def _reduction(side: float, input_size: int) -> int:
    """The JPEG decode reduction for a crop of `side` image pixels.

    The crop is downscaled to input_size anyway, so when side >= 2 x input_size libjpeg can decode
    at 1/2, 1/4 or 1/8 scale (its DCT scaling averages, so this is no worse than full-size decoding
    followed by the bilinear warp, which would alias) and the box is scaled with it: reduced pixel i
    covers image pixels f*i .. f*i + f, so image coordinate x is x / f there. Several times faster.
    """
    for factor in (8, 4, 2):
        if side >= factor * input_size:
            return factor
    return 1


def image_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header without decoding; None if it has no usable one."""
    try:
        header = read_header(data)
    except ImageProblem:
        return None
    return header.width, header.height


# --- is the image folder the one the annotations describe? -------------------------------------------

FOLDER_SAMPLES = 8  # image headers read when a split is opened


def check_image_folder(image_dir, file_names, image_sizes, source, samples: int = FOLDER_SAMPLES) -> None:
    """Stop early when the folder cannot hold the annotation file's images; cheap (a few headers).

    A missing, empty or misplaced folder (unzipped one level too deep), or one where most sampled
    images are unreadable or of other sizes, is a UserError naming the folder expected.
    """
    if not len(file_names):
        return None
    image_dir = Path(image_dir)
    expected = f"expected the images of {source} there"
    nested = image_dir / image_dir.name
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found ({expected})")
    picks = np.unique(np.linspace(0, len(file_names) - 1, min(samples, len(file_names))).round().astype(int))
    problems = []
    for i in picks:
        try:
            header = read_header(read_image_bytes(image_dir / file_names[i]))
            check_size((header.width, header.height), image_sizes[i])  # a pixel off is no folder problem
        except ImageProblem as exc:
            problems.append(f"{file_names[i]}: {exc}")
    if 2 * len(problems) > len(picks):  # most of them: the folder, not a few files, is wrong
        if nested.is_dir() and any((nested / file_names[i]).is_file() for i in picks):
            raise UserError(f"{image_dir}: the images are one level too deep, in {nested}; "
                            f"move them up into {image_dir}")
        if not any(image_dir.iterdir()):
            raise UserError(f"{image_dir}: image folder is empty ({expected})")
        raise UserError(f"{image_dir}: {len(problems)} of {len(picks)} sampled images unusable "
                        f"(first: {problems[0]}); {expected}")


def single_threaded_opencv() -> None:
    """One OpenCV thread in this process and the workers it will fork: the worker processes are the
    parallelism (more threads only oversubscribe the cores), and a forked child must not touch the
    parent's OpenCV thread pool. Called in the parent, before forking; it stays set."""
    cv2.setNumThreads(1)
