"""`make demo`: the whole job end to end on a generated COCO-format dataset, sized for a 2-core CPU.

generate the dataset (if absent) -> train with the seed's protocol on a reduced model -> evaluate the
best checkpoint on the test split -> Figure 2 and Table 1 -> predictions drawn on test images ->
the explore report. Every step reuses what an earlier (possibly interrupted) demo left behind.

    python -m hgpose.demo [--out demo-out] [--precision auto|fp32|bf16] [--epochs N]

Ctrl-C (or SIGTERM) during training saves a resumable checkpoint and stops the demo (exit code 130);
running the same command again resumes the training where it stopped and goes on from there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hgpose.model.hourglass import ModelConfig

# The seed's architecture (one hourglass, 4 down/upsamples, 1 residual per level, 3 at the
# bottleneck) at half the width on 64x64 crops (16x16 heatmaps): ~37x cheaper than the seed's model,
# so it learns here in minutes. The LR is 4x the seed's for the same reason; all else is the protocol.
DEMO_MODEL = ModelConfig(features=128, input_size=64)
DEMO_LR = 1e-3
DEMO_EPOCHS = 20
DEMO_TRAIN_IMAGES = 1200
DEMO_VAL_IMAGES = 200


class DemoInterrupted(Exception):
    """Training was stopped (Ctrl-C or SIGTERM) and saved; running the demo again resumes it."""


def run_demo(out: Path, precision: str = "auto", epochs: int = DEMO_EPOCHS, workers: int = 0, *,
             train_images: int = DEMO_TRAIN_IMAGES, val_images: int = DEMO_VAL_IMAGES,
             model: ModelConfig = DEMO_MODEL, extras: bool = True) -> dict:
    """The whole demo; raises DemoInterrupted when its training was stopped before the last epoch.
    The sizes (and extras=False: stop after Table 1) are parameters only so that tests can run the same
    code path quickly."""
    from hgpose.data.coco import annotation_path
    from hgpose.data.person_boxes import demo_detections
    from hgpose.data.prepare import prepare_cache
    from hgpose.evaluate import evaluate_checkpoint, format_evaluation
    from hgpose.explore import write_explore_report
    from hgpose.predict import predict_paths
    from hgpose.report import write_report
    from hgpose.runtime.device import resolve_device
    from hgpose.runtime.precision import resolve_precision
    from hgpose.synth import generate_dataset
    from hgpose.train.config import TrainConfig
    from hgpose.train.loop import train
    from hgpose.train.run_dir import load_run_config, run_is_finished

    started = time.perf_counter()
    precision = resolve_precision(precision, resolve_device("auto"))
    data, run_dir = out / "data", out / "run"
    if not annotation_path(data, "val2017").is_file():
        print(f"[1/6] generating the COCO-format dataset in {data}")
        generate_dataset(data, train_images=train_images, val_images=val_images, seed=0)
    else:
        print(f"[1/6] dataset present in {data}")

    # crop every person once: with the cache, loading costs almost nothing and needs no worker
    # processes competing with the training threads for the 2 cores
    for split in ("train2017", "val2017"):
        prepare_cache(annotation_path(data, split), data / split, model.input_size, progress=False)

    print(f"[2/6] training {run_dir}")
    if (run_dir / "config.yaml").is_file():  # an earlier demo started this run: finish it
        config = load_run_config(run_dir)
        config.epochs = epochs
        if not run_is_finished(run_dir, config):
            train(config, resume=run_dir)
    else:
        config = TrainConfig(data=str(data), out=str(run_dir), epochs=epochs, lr=DEMO_LR, precision=precision,
                             workers=workers, model=model)
        train(config)
    if not run_is_finished(run_dir, config):
        raise DemoInterrupted(f"training of {run_dir} was interrupted and saved")

    print("[3/6] evaluating the best checkpoint on the test split (val2017), on ground-truth boxes and on "
          "stand-in detections (jittered ground truth plus false positives, not a detector)")
    result = evaluate_checkpoint(run_dir / "best.safetensors", data, split="val2017", precision=precision,
                                 workers=workers, out=run_dir / "test_eval.json", boxes=demo_detections(data),
                                 plots=True)
    print(format_evaluation(result))

    print("[4/6] Figure 2 and Table 1")
    report = write_report(run_dir)
    print((run_dir / "table1.md").read_text())
    if not extras:
        return {"test_pck": result["pck"]["all"]["overall"], "outputs": report}

    print("[5/6] drawing predictions on test images")
    images = sorted((data / "val2017").glob("*.jpg"))[:8]
    predictions = out / "predictions"
    predict_paths(run_dir / "best.safetensors", images,
                  boxes_json=data / "annotations" / "person_keypoints_val2017.json", out=predictions)

    print("[6/6] explore report")
    explore_html = write_explore_report(run_dir / "best.safetensors", data, split="val2017", samples=64,
                                        out=out / "explore", run=run_dir)

    outputs = {
        "dataset": data,
        "run directory": run_dir,
        "metrics": run_dir / "metrics.csv",
        "best checkpoint": run_dir / "best.safetensors",
        "test evaluation": run_dir / "test_eval.json",
        **{f"report {k}": v for k, v in report.items()},
        "predictions": predictions,
        "explore report": explore_html,
    }
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min; outputs:")
    for name, path in outputs.items():
        print(f"  {name:22s} {path}")
    return {"test_pck": result["pck"]["all"]["overall"], "outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--workers", type=int, default=0)
    # smaller sizes, for tests of the demo's own code path
    parser.add_argument("--train-images", type=int, default=DEMO_TRAIN_IMAGES, help=argparse.SUPPRESS)
    parser.add_argument("--val-images", type=int, default=DEMO_VAL_IMAGES, help=argparse.SUPPRESS)
    parser.add_argument("--features", type=int, default=DEMO_MODEL.features, help=argparse.SUPPRESS)
    parser.add_argument("--until-report", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from hgpose.runtime.files import UserError

    model = ModelConfig(features=args.features, input_size=DEMO_MODEL.input_size)
    try:
        run_demo(args.out, args.precision, args.epochs, args.workers, train_images=args.train_images,
                 val_images=args.val_images, model=model, extras=not args.until_report)
    except (DemoInterrupted, KeyboardInterrupt) as exc:  # training saved what it had; Ctrl-C before it nothing to lose
        again = "make demo" if args.out == Path("demo-out") else "python -m hgpose.demo " + " ".join(
            sys.argv[1:] if argv is None else argv)
        what = exc if isinstance(exc, DemoInterrupted) else "interrupted"
        print(f"demo stopped: {what}; run `{again}` again to resume it", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
