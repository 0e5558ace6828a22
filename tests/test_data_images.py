"""hgpose.data.images: one bad image file is a counted skip with a reason, never a crash or a hang."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from hgpose.data import images
from hgpose.data.coco import load_split
from hgpose.data.dataset import PersonDataset
from hgpose.data.images import apply_orientation, crop_file, read_header


def _bmp_header(width: int, height: int, payload: bytes = b"\0" * 64) -> bytes:
    """A real 24-bit BMP file header announcing width x height, followed by a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    size = 14 + len(info) + len(payload)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + len(info)) + info + payload


def _png_header(width: int, height: int) -> bytes:
    """A real PNG announcing width x height whose compressed data is one all-zero row (a few bytes):
    a decoder would allocate the whole image first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _jpeg(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _texture(height=120, width=160, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


BOX = np.array([[20.0, 10.0, 100.0]])  # one square crop box inside a 160x120 image


@pytest.mark.parametrize("ext", [".tif", ".bmp", ".webp", ".png", ".jpg", ".ppm"])
def test_the_pixel_limit_is_checked_from_the_header_of_every_format(tmp_path, monkeypatch, ext):
    path = tmp_path / f"image{ext}"
    assert cv2.imwrite(str(path), _texture(30, 40))
    assert crop_file(path, BOX, 32, (40, 30)).problem is None
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 30 * 40 - 1)
    decoded = []
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a: decoded.append(a))  # must not be reached
    assert crop_file(path, BOX, 32, (40, 30)).problem == "image too large (40x30)"
    assert not decoded


@pytest.mark.parametrize("header", [_bmp_header(20000, 20000), _png_header(30000, 30000)])
def test_a_tiny_file_announcing_gigapixels_is_refused_before_decoding(tmp_path, header):
    path = tmp_path / "bomb.img"
    path.write_bytes(header)
    assert len(header) < 200
    result = crop_file(path, BOX, 32, (20000, 20000))
    assert result.problem.startswith("image too large") and result.crops is None


def test_an_image_opencv_raises_on_is_a_skip(tmp_path):
    # 16 x 2,000,000 is under the pixel limit, but OpenCV asserts on its height instead of returning None
    path = tmp_path / "tall.bmp"
    path.write_bytes(_bmp_header(16, 2_000_000))
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    result = crop_file(path, BOX, 32, (16, 2_000_000))
    assert result.crops is None and result.problem == "cannot decode (OpenCV error)"


def test_formats_whose_size_cannot_be_read_first_are_refused(tmp_path):
    path = tmp_path / "image.hdr"  # Radiance HDR: OpenCV decodes it, Pillow cannot read its header
    assert cv2.imwrite(str(path), _texture(8, 8).astype(np.float32))
    assert cv2.imread(str(path)) is not None
    assert crop_file(path, BOX, 32, (8, 8)).problem == "not an image of a known format"


def test_a_fifo_is_refused_at_once_instead_of_hanging(tmp_path):
    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=crop_file(fifo, BOX, 32, (160, 120))), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "reading a FIFO hung"
    assert result["r"].problem == "not a regular file"
    assert crop_file(tmp_path, BOX, 32, (160, 120)).problem == "not a regular file"  # a folder


def test_files_over_the_byte_cap_are_refused_without_reading_them(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(_texture()))
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", path.stat().st_size - 1)
    assert crop_file(path, BOX, 32, (160, 120)).problem.startswith("file too large")


def test_bytes_after_the_end_of_image_marker_are_fine_but_a_cut_jpeg_is_caught(tmp_path):
    jpeg = _jpeg(_texture())
    clean, trailer, cut = tmp_path / "clean.jpg", tmp_path / "trailer.jpg", tmp_path / "cut.jpg"
    clean.write_bytes(jpeg)
    trailer.write_bytes(jpeg + b"SEFH" + np.random.default_rng(1).bytes(10000))  # a phone's appended data
    cut.write_bytes(jpeg[: len(jpeg) * 2 // 3])
    reference = crop_file(clean, BOX, 64, (160, 120))
    appended = crop_file(trailer, BOX, 64, (160, 120))
    assert appended.problem is None
    np.testing.assert_array_equal(appended.crops[0], reference.crops[0])
    assert crop_file(cut, BOX, 64, (160, 120)).problem.startswith("truncated JPEG")


def test_a_thumbnails_end_marker_does_not_hide_truncation():
    """A thumbnail in an APP segment holds its own FF D9 before the main scan; a cut image is still caught."""
    thumbnail = _jpeg(_texture(16, 16))
    main = _jpeg(_texture())
    planted = main[:2] + b"\xff\xe2" + struct.pack(">H", len(thumbnail) + 2) + thumbnail + main[2:]
    assert read_header(planted).width == 160 and images.jpeg_is_complete(planted)
    assert not images.jpeg_is_complete(planted[: len(planted) - 200])


def test_a_size_a_pixel_off_is_a_warning_when_the_annotation_fits(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(_jpeg(_texture(120, 161)))
    used = crop_file(path, BOX, 32, (160, 120), extent=(150, 110))
    assert used.problem is None and used.crops is not None
    assert used.warning == "image is 161x120, annotation says 160x120 (used as decoded)"
    # the JSON says one more pixel than the file has, and the annotation reaches into it: not usable
    assert crop_file(path, BOX, 32, (162, 120), extent=(161.5, 100)).problem.startswith("image is 161x120")
    assert crop_file(path, BOX, 32, (163, 120)).problem == "image is 161x120, annotation says 163x120"


def test_the_dataset_keeps_an_image_a_pixel_off(tiny_coco):
    image = tiny_coco.add_image(width=161, height=120, pixels=_texture(120, 160))  # the file is 160 wide
    tiny_coco.add_person(image, bbox=(40.0, 20.0, 40.0, 80.0))
    tiny_coco.add_person(tiny_coco.add_image())
    index = load_split(tiny_coco.write(), "train2017")
    dataset = PersonDataset(index, 64, cache="off")
    assert [bool(dataset[i]["valid"]) for i in range(len(dataset))] == [True, True]


@pytest.mark.parametrize("tag", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(tag):
    from PIL import ImageOps

    stored = _texture(5, 7, seed=tag)
    exif = Image.Exif()
    exif[0x0112] = tag
    picture = Image.fromarray(stored)
    picture.info["exif"] = exif.tobytes()
    picture.getexif()[0x0112] = tag
    expected = np.asarray(ImageOps.exif_transpose(picture))
    np.testing.assert_array_equal(apply_orientation(stored, tag), expected)


def test_orientation_is_read_from_the_header_only_when_asked(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(_texture(120, 160)).save(buffer, "JPEG", exif=exif.tobytes())
    assert read_header(buffer.getvalue(), orientation=True).orientation == 6
    assert read_header(buffer.getvalue()).orientation == 1
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buffer.getvalue())
    assert crop_file(path, None, 32, upright=True).size == (120, 160)
    assert crop_file(path, None, 32).size == (160, 120)


def test_an_image_opencv_raises_on_is_a_counted_skip_in_the_dataset_and_prepare(tiny_coco, tmp_path, capsys):
    from hgpose.cli import main

    for _ in range(4):
        tiny_coco.add_person(tiny_coco.add_image())
    tall = tiny_coco.add_image(width=16, height=2_000_000, file_name="tall.bmp", write=False)
    tiny_coco.add_person(tall, bbox=(2.0, 2.0, 10.0, 10.0), keypoints=[5.0, 5.0, 2] * 17)
    root = tiny_coco.write()
    (root / "train2017" / "tall.bmp").write_bytes(_bmp_header(16, 2_000_000))
    dataset = PersonDataset(load_split(root, "train2017"), 32, cache="off")
    assert [bool(dataset[i]["valid"]) for i in range(len(dataset))] == [True] * 4 + [False]
    capsys.readouterr()
    assert main(["prepare", "--data", str(root), "--splits", "train2017", "--input-size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 instances skipped, their images unreadable: tall.bmp (cannot decode (OpenCV error))" in out


@pytest.mark.parametrize("tag", range(1, 9))
def test_an_upright_crop_equals_the_crop_of_the_turned_image_when_decoded_at_reduced_size(tmp_path, tag):
    """Orientation and reduced decoding together: the crop of an upright box is the crop of the same box
    from the (half-size decoded) image turned upright; even sides, so both pixel grids line up."""
    from hgpose.data.images import _reduction
    from hgpose.data.transforms import crop_image

    exif = Image.Exif()
    exif[0x0112] = tag
    buffer = io.BytesIO()
    Image.fromarray(cv2.GaussianBlur(_texture(124, 158), (0, 0), 2)).save(buffer, "JPEG", quality=95,
                                                                        exif=exif.tobytes())
    path = tmp_path / "photo.jpg"
    path.write_bytes(buffer.getvalue())
    box = np.array([[7.3, 11.9, 140.0]])
    assert _reduction(box[0, 2], 64) == 2
    crop = crop_file(path, box, 64, upright=True).crops[0].astype(int)
    reduced = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8),
                           cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION)
    expected = crop_image(apply_orientation(reduced, tag), box[0] / 2, 64).transpose(2, 0, 1)[::-1]
    difference = np.abs(crop - expected)
    assert difference.max() <= 1 and difference.mean() < 0.01  # bilinear rounding in another axis order
