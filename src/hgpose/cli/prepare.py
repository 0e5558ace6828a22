from pathlib import Path

from hgpose.cli.common import check_output_path, require_at_least
from hgpose.data.cache import read_cache_meta
from hgpose.data.coco import annotation_path, load_split
from hgpose.data.prepare import prepare_cache
from hgpose.runtime.files import UserError

HELP = "crop every kept person of a COCO-style dataset once into a fast on-disk cache"
DESCRIPTION = (
    HELP + ". Training and evaluation then read crops from the cache instead of decoding JPEGs, "
    "whenever it is current; a cache whose source JSON or crop settings changed is rebuilt here. "
    "It takes 3 x input_size^2 bytes per person (about 29 GB for train2017 at 256 px), reserved before "
    "any work: a full disk is an error at once. Two prepares of the same cache: the second waits."
)


def add_arguments(parser):
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="COCO-style root: DIR/annotations/person_keypoints_<split>.json, images in DIR/<split>/")
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"], metavar="SPLIT",
                        help="annotation files to prepare (the held-out validation part shares train2017's cache)")
    parser.add_argument("--input-size", type=int, default=256, metavar="N", help="crop side in pixels")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="where caches go when DIR is read-only (default: DIR/hgpose_cache); "
                             "pass the same to training")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes decoding images (default: all CPUs)")
    parser.add_argument("--force", action="store_true", help="rebuild even a current cache")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args):
    require_at_least(args, 1, "workers")
    if args.input_size < 4 or args.input_size % 4:
        raise UserError(f"--input-size must be a positive multiple of 4 (a model input; its heatmaps are a quarter "
                        f"of it), got {args.input_size}")
    check_output_path(args.cache_dir, "--cache-dir", directory=True)
    indexes = [load_split(args.data, split) for split in args.splits]  # every file checked before any work
    for split, index in zip(args.splits, indexes):
        print(index.describe())
        path = prepare_cache(annotation_path(args.data, split), args.data / split, args.input_size,
                             args.cache_dir, args.progress, workers=args.workers, index=index, force=args.force)
        meta = read_cache_meta(path)
        line = f"{split}: {meta['count']} crops in {path}"
        if meta["invalid"]:
            bad = meta["unreadable"]
            shown = "; ".join(f"{b['file_name']} ({b['problem']})" for b in bad[:5])
            more = f"; and {len(bad) - 5} more (see {path / 'meta.json'})" if len(bad) > 5 else ""
            line += f"; {meta['invalid']} instances skipped, their images unreadable: {shown}{more}"
        warned = meta.get("size_warnings", [])
        if warned:
            shown = "; ".join(f"{w['file_name']} ({w['warning']})" for w in warned[:3])
            line += (f"; {sum(w['instances'] for w in warned)} instances cropped from {len(warned)} images a "
                     f"pixel off their annotated size (used as decoded): {shown}"
                     + (f"; and {len(warned) - 3} more (see {path / 'meta.json'})" if len(warned) > 3 else ""))
        print(line)
