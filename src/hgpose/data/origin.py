"""Where a dataset came from: whether an annotation file was written by `hgpose synth`, so that a
model that learnt from generated figures can say so when it is run on photos.

`hgpose train` records the origin in each checkpoint's metadata (ORIGIN_KEY); predict reads it back.
"""

from __future__ import annotations

ORIGIN_KEY = "hgpose_data_origin"
GENERATED = "generated"  # by hgpose synth
# hgpose synth writes its marker in the annotation file's "info", the first object of the file
SYNTH_MARKER = b'"hgpose_synth"'
HEAD_BYTES = 64 * 1024


def annotation_origin(annotation_file) -> str | None:
    """GENERATED when `annotation_file` was written by hgpose synth, else None (unknown: real data,
    or not readable). Reads only the file's start: COCO's train2017 file is 450 MB."""
    try:
        with open(annotation_file, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return None
    return GENERATED if SYNTH_MARKER in head else None


def origin_metadata(annotation_file) -> dict[str, str]:
    """The checkpoint metadata that records the origin of the data in `annotation_file` ({} if unknown)."""
    origin = annotation_origin(annotation_file)
    return {ORIGIN_KEY: origin} if origin else {}
