"""Which images of a dataset are unusable, or a pixel off their annotated size, known before a run.

With a prepared cache, `hgpose prepare` has decoded every image and listed both in meta.json. Without
one, every image's header is read up front (its first 64 KB, in threads: the demo's 1,200 images took
0.6 s on a busy 2-core machine, warm page cache), which finds what makes a file unusable before decoding (missing, not
a regular file, not an image, too large, another size); a body that fails to decode is found only
when training or evaluation reads it, and reported then.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from hgpose.data.cache import read_cache_meta
from hgpose.data.images import check_image_header, crop_file
from hgpose.runtime.progress import progress_bar

HEADER_THREADS = 8  # header reads wait on the disk, not the CPU
SHOWN = 3  # file names listed in a report line


@dataclass
class ImageReport:
    """Per image file name: why it is unusable (problems) or how it is off its size (warnings), and
    how many of the dataset's samples each concerns."""

    problems: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    bad_samples: int = 0
    warned_samples: int = 0
    source: str = "image headers"  # or "prepared cache"

    def lines(self, what: str) -> list[str]:
        """The report as lines for a console and a log: e.g. what = "training"."""
        out = []
        if self.problems:
            out.append(f"{self.bad_samples} {what} samples in {len(self.problems)} unusable images skipped "
                       f"(found in the {self.source}), e.g. {_examples(self.problems)}")
        if self.warnings:
            out.append(self.warning_line(what))
        return out

    def warning_line(self, what: str) -> str | None:
        """The size warnings alone, as one line (None without any)."""
        if not self.warnings:
            return None
        return (f"{self.warned_samples} {what} samples in {len(self.warnings)} images a pixel off their "
                f"annotated size, used as decoded, e.g. {_examples(self.warnings)}")

    def size_warnings_json(self, limit: int = 5) -> dict | None:
        """{"images", "instances", "first": [{"file_name", "warning"}]}, or None without warnings."""
        if not self.warnings:
            return None
        first = [{"file_name": name, "warning": why} for name, why in list(self.warnings.items())[:limit]]
        return {"images": len(self.warnings), "instances": self.warned_samples, "first": first}


def _examples(by_file: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in list(by_file.items())[:SHOWN])


def image_report(dataset, progress: bool = True) -> ImageReport:
    """The ImageReport of a hgpose.data.dataset.PersonDataset: from its prepared cache's meta.json when
    it reads one, else from every image's header."""
    if dataset.using_cache:
        return _from_cache(dataset)
    return _from_headers(dataset, progress)


def _from_cache(dataset) -> ImageReport:
    meta = read_cache_meta(dataset.cache_path)
    report = ImageReport(source="prepared cache")
    names = [dataset.index.file_names[i] for i in dataset.index.image_index]  # per sample of this dataset
    for key, target, attribute in (("unreadable", report.problems, "problem"),
                                   ("size_warnings", report.warnings, "warning")):
        listed = {entry["file_name"]: entry[attribute] for entry in meta.get(key, [])}
        concerned = [name for name in names if name in listed]
        target.update({name: listed[name] for name in dict.fromkeys(concerned)})
        setattr(report, "bad_samples" if key == "unreadable" else "warned_samples", len(concerned))
    return report


def _from_headers(dataset, progress: bool) -> ImageReport:
    index = dataset.index
    images = np.unique(index.image_index)
    furthest = _furthest_per_image(index.image_index, dataset.extents)  # an image must fit all its people

    def check(image: int):
        return check_image_header(index.image_dir / index.file_names[image], index.image_sizes[image],
                                  furthest[int(image)])

    report = ImageReport()
    bar = progress_bar(total=len(images), desc=f"checking {index.split} images", unit="image",
                       disable=not progress, leave=False, dynamic_ncols=True)
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        for image, (problem, warning) in zip(images.tolist(), pool.map(check, images.tolist())):
            name = str(index.file_names[image])
            if problem:
                report.problems[name] = problem
            elif warning:
                report.warnings[name] = warning
            bar.update(1)
    bar.close()
    per_image = np.bincount(index.image_index, minlength=len(index.file_names))
    rows = {str(index.file_names[i]): int(per_image[i]) for i in images}
    report.bad_samples = sum(rows[name] for name in report.problems)
    report.warned_samples = sum(rows[name] for name in report.warnings)
    return report


def _furthest_per_image(image_index: np.ndarray, extents: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(image_index, kind="stable")
    keys, starts = np.unique(image_index[order], return_index=True)
    maxima = np.maximum.reduceat(extents[order], starts, axis=0)
    return dict(zip(keys.tolist(), maxima))


def first_problems(dataset, positions, limit: int = SHOWN, default: str = "unreadable") -> dict[str, str]:
    """{file_name: problem} for the first `limit` distinct images among the dataset `positions` of
    samples that could not be read: those few files are cropped again to name why (cheap)."""
    index, named = dataset.index, {}
    for position in positions:
        position = int(position)
        name = index.file_names[index.image_index[position]]
        if name in named:
            continue
        if len(named) == limit:
            break
        named[name] = crop_file(index.image_path(position), dataset.boxes[position : position + 1],
                                dataset.input_size, index.image_sizes[index.image_index[position]],
                                extent=dataset.extents[position]).problem or default
    return named
