"""`make demo`: the whole job end to end on a generated COCO-format dataset, sized for a 2-core CPU.

generate the dataset (if absent) -> train with the seed's protocol on a reduced model -> evaluate the
best checkpoint on the test split -> Figure 2 and Table 1 -> predictions drawn on test images ->
the explore report. Every step reuses what an earlier (possibly interrupted) demo left behind: the
training resumes or is kept, and each later step is skipped (saying so) when its outputs exist and the
digest of its inputs (files, precision, hgpose version), kept in OUT/demo_steps.json, is unchanged.
The demo prints the precision it used and, at the end, its figures beside those docs/demo.md lists for
that precision (EXPECTED below).

    python -m hgpose.demo [--out demo-out] [--precision auto|fp32|bf16] [--epochs N]

Ctrl-C (or SIGTERM) during training saves a resumable checkpoint and stops the demo (exit code 130);
running the same command again resumes the training where it stopped and goes on from there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from hgpose.data.coco import annotation_path
from hgpose.data.person_boxes import demo_detections
from hgpose.data.prepare import prepare_cache
from hgpose.evaluate import evaluate_checkpoint, format_evaluation
from hgpose.explore import write_explore_report
from hgpose.model.hourglass import ModelConfig
from hgpose.predict import predict_paths
from hgpose.report import write_report
from hgpose.runtime.device import resolve_device
from hgpose.runtime.files import UserError, atomic_write_json
from hgpose.runtime.precision import resolve_precision
from hgpose.runtime.version import __version__
from hgpose.synth import GENERATOR_VERSION, generate_dataset
from hgpose.train.config import TrainConfig
from hgpose.train.loop import train
from hgpose.train.run_dir import load_run_config, run_is_finished

# The seed's architecture (one hourglass, 4 down/upsamples, 1 residual per level, 3 at the
# bottleneck) at half the width on 64x64 crops (16x16 heatmaps): ~37x cheaper than the seed's model,
# so it learns here in minutes. The LR is 4x the seed's for the same reason; all else is the protocol.
DEMO_MODEL = ModelConfig(features=128, input_size=64)
DEMO_LR = 1e-3
DEMO_EPOCHS = 20
DEMO_TRAIN_IMAGES = 1200
DEMO_VAL_IMAGES = 200
STEPS_FILE = "demo_steps.json"

# The figures docs/demo.md lists for the default demo, per precision (test split, quarter decoding;
# plain and with the flip test), measured with this version: the one place they live; the demo prints
# them beside its own. Torch's thread count changes the bits (docs/commands/train.md, "Same machine, same
# numbers"): bf16 is `make demo` as it runs by default here (2 threads); fp32 was measured on the same
# CPU with --precision fp32 and one thread. No AVX2-only CPU was at hand.
EXPECTED: dict[str, dict] = {
    "bf16": {"cpu": "Intel Xeon with AVX512-BF16 and AMX", "threads": 2, "test PCK": 0.507,
             "AP (ground-truth boxes)": 0.142, "AP (detected boxes)": 0.051, "test PCK, flip test": 0.541,
             "AP (ground-truth), flip test": 0.162},
    "fp32": {"cpu": "Intel Xeon with AVX512-BF16 and AMX, --precision fp32", "threads": 1, "test PCK": 0.564,
             "AP (ground-truth boxes)": 0.198, "AP (detected boxes)": 0.066, "test PCK, flip test": 0.592,
             "AP (ground-truth), flip test": 0.229},
}


class DemoInterrupted(Exception):
    """Training was stopped (Ctrl-C or SIGTERM) and saved; running the demo again resumes it."""


# ------------------------------------------------------------------------------ reusing finished steps


def digest(*parts) -> str:
    """A digest of files (their bytes) and plain values: a step's inputs, to tell whether it must rerun."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(str(part.name).encode())
            h.update(part.read_bytes() if part.is_file() else b"<missing>")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


class StepLedger:
    """OUT/demo_steps.json: for each finished step, the digest of its inputs and what it returned.

    A step is reused only when its digest matches and every output it names still exists: new weights,
    new data, another precision or another hgpose version rerun it."""
    def __init__(self, out: Path):
        self.path = out / STEPS_FILE
        self.steps = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def reusable(self, step: str, inputs: str):
        entry = self.steps.get(step)
        if not entry or entry["inputs"] != inputs or not all(Path(p).exists() for p in entry["outputs"]):
            return None
        return entry["value"]

    def record(self, step: str, inputs: str, outputs: list, value) -> None:
        self.steps[step] = {"inputs": inputs, "outputs": [str(p) for p in outputs], "value": value}
        atomic_write_json(self.path, self.steps)


def _check_generator_version(data: Path) -> None:
    """The documented figures are for this generator: data drawn by another one must not pass for it."""
    info = json.loads(annotation_path(data, "val2017").read_text()).get("info", {})
    version = info.get("hgpose_synth", {}).get("version")
    if version != GENERATOR_VERSION:
        raise UserError(f"{data}: drawn by hgpose synth version {version}, this demo draws version "
                        f"{GENERATOR_VERSION}; remove {data.parent} (or give another --out) and run the demo again")


# ------------------------------------------------------------------------------ the demo


def _prepare_data(data: Path, train_images: int, val_images: int, input_size: int) -> None:
    if not annotation_path(data, "val2017").is_file():
        print(f"[1/6] generating the COCO-format dataset in {data}")
        generate_dataset(data, train_images=train_images, val_images=val_images, seed=0)
    else:
        _check_generator_version(data)
        print(f"[1/6] dataset present in {data}")
    # crop every person once: with the cache, loading costs almost nothing and needs no worker
    # processes competing with the training threads for the 2 cores
    for split in ("train2017", "val2017"):
        prepare_cache(annotation_path(data, split), data / split, input_size, progress=False)


def _train_run(data: Path, run_dir: Path, epochs: int, precision: str, workers: int, model: ModelConfig) -> None:
    print(f"[2/6] training {run_dir}")
    if (run_dir / "config.yaml").is_file():  # an earlier demo started this run: finish it
        config = load_run_config(run_dir)
        config.epochs = epochs
        if run_is_finished(run_dir, config):
            print(f"  reusing the finished run in {run_dir}")
        else:
            train(config, resume=run_dir, say_resume=False)
    else:
        config = TrainConfig(data=str(data), out=str(run_dir), epochs=epochs, lr=DEMO_LR, precision=precision,
                             workers=workers, model=model)
        train(config, say_resume=False)
    if not run_is_finished(run_dir, config):
        raise DemoInterrupted(f"training of {run_dir} was interrupted and saved")


def _evaluate(ledger: StepLedger, data: Path, run_dir: Path, precision: str, workers: int) -> dict:
    print("[3/6] evaluating the best checkpoint on the test split (val2017), on ground-truth boxes and on "
          "stand-in detections (jittered ground truth plus false positives, not a detector)")
    boxes, out = demo_detections(data), run_dir / "test_eval.json"
    inputs = digest(run_dir / "best.safetensors", annotation_path(data, "val2017"), Path(boxes), precision,
                    __version__)
    if ledger.reusable("evaluate", inputs) is not None:
        print(f"  reusing {out}: same checkpoint, data, boxes and precision")
        result = json.loads(out.read_text())
    else:
        result = evaluate_checkpoint(run_dir / "best.safetensors", data, split="val2017", precision=precision,
                                     workers=workers, out=out, boxes=boxes, plots=True)
        ledger.record("evaluate", inputs, [out], True)
    print(format_evaluation(result))
    flipped = run_dir / "test_eval_flip.json"  # the flip test helps here as on COCO: the demo shows it
    if ledger.reusable("evaluate flip", inputs) is not None:
        print(f"  reusing {flipped}")
        result["flip_test"] = json.loads(flipped.read_text())
    else:
        result["flip_test"] = evaluate_checkpoint(run_dir / "best.safetensors", data, split="val2017",
                                                  precision=precision, workers=workers, out=flipped,
                                                  flip_test=True, progress=False)
        ledger.record("evaluate flip", inputs, [flipped], True)
    print(f"with the flip test: test PCK {result['flip_test']['pck']['all']['overall']:.3f}, AP (ground-truth "
          f"boxes) {result['flip_test']['coco']['AP']:.3f}")
    return result


def _report(ledger: StepLedger, run_dir: Path) -> dict:
    print("[4/6] Figure 2 and Table 1")
    inputs = digest(run_dir / "metrics.csv", run_dir / "test_eval.json", run_dir / "config.yaml", __version__)
    report = ledger.reusable("report", inputs)
    if report is not None:
        print(f"  reusing the report in {run_dir}: same metrics and test evaluation")
        report = {name: Path(path) for name, path in report.items()}
    else:
        report = write_report(run_dir)
        ledger.record("report", inputs, list(report.values()), {k: str(v) for k, v in report.items()})
    print((run_dir / "table1.md").read_text())
    return report


def _extras(ledger: StepLedger, out: Path, data: Path, run_dir: Path) -> tuple[Path, Path]:
    best, annotations = run_dir / "best.safetensors", annotation_path(data, "val2017")
    print("[5/6] drawing predictions on test images")
    images = sorted((data / "val2017").glob("*.jpg"))[:8]
    predictions = out / "predictions"
    inputs = digest(best, annotations, *images, __version__)
    if ledger.reusable("predictions", inputs) is not None:
        print(f"  reusing {predictions}: same checkpoint and images")
    else:
        predict_paths(best, images, boxes_json=annotations, out=predictions)
        ledger.record("predictions", inputs, [predictions], True)

    print("[6/6] explore report")
    inputs = digest(best, annotations, run_dir / "metrics.csv", run_dir / "test_eval.json", __version__)
    explore_html = ledger.reusable("explore", inputs)
    if explore_html is not None:
        print(f"  reusing {explore_html}: same checkpoint, data and run")
        explore_html = Path(explore_html)
    else:
        explore_html = write_explore_report(best, data, split="val2017", samples=64, out=out / "explore", run=run_dir)
        ledger.record("explore", inputs, [explore_html], str(explore_html))
    return predictions, explore_html


def measured_figures(result: dict) -> dict:
    """The figures EXPECTED lists, from an evaluation result."""
    return {"test PCK": result["pck"]["all"]["overall"], "AP (ground-truth boxes)": result["coco"]["AP"],
            "AP (detected boxes)": result["detected_boxes"]["coco"]["AP"],
            "test PCK, flip test": result["flip_test"]["pck"]["all"]["overall"],
            "AP (ground-truth), flip test": result["flip_test"]["coco"]["AP"]}


def format_figures(precision: str, measured: dict, default_sizes: bool) -> str:
    """Measured figures beside the documented ones for this precision, or why there are none to compare."""
    expected = EXPECTED.get(precision, {})
    where = f"docs/demo.md, {expected['cpu']}, {expected['threads']} torch thread(s)" if expected \
        else "docs/demo.md lists none for this precision"
    lines = [f"figures ({precision})          this run   {where}"]
    if expected and expected["threads"] != torch.get_num_threads():
        lines.append(f"  (this run used {torch.get_num_threads()} torch threads: other sums, so other bits)")
    for name, value in measured.items():
        documented = expected.get(name) if default_sizes else None
        shown = f"{documented:.3f}" if documented is not None else "-"
        lines.append(f"  {name:26s}{value:9.3f}   {shown}")
    if not default_sizes:
        lines.append("  (the documented figures are for the default demo: 1,200 + 200 images, 20 epochs)")
    return "\n".join(lines)


def run_demo(out: Path, precision: str = "auto", epochs: int = DEMO_EPOCHS, workers: int = 0, *,
             train_images: int = DEMO_TRAIN_IMAGES, val_images: int = DEMO_VAL_IMAGES,
             model: ModelConfig = DEMO_MODEL, extras: bool = True) -> dict:
    """The whole demo; raises DemoInterrupted when its training was stopped before the last epoch.
    The sizes (and extras=False: stop after Table 1) are parameters only so that tests can run the same
    code path quickly."""
    started = time.perf_counter()
    asked = precision
    precision = resolve_precision(precision, resolve_device("auto"))
    print(f"precision: {precision}" + (" (auto: chosen for this CPU)" if asked == "auto" else ""))
    data, run_dir = out / "data", out / "run"
    _prepare_data(data, train_images, val_images, model.input_size)
    _train_run(data, run_dir, epochs, precision, workers, model)
    ledger = StepLedger(out)
    result = _evaluate(ledger, data, run_dir, precision, workers)
    report = _report(ledger, run_dir)
    default_sizes = (train_images, val_images, epochs, model) == (DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES,
                                                                  DEMO_EPOCHS, DEMO_MODEL)
    figures = format_figures(precision, measured_figures(result), default_sizes)
    if not extras:
        print(figures)
        return {"test_pck": result["pck"]["all"]["overall"], "outputs": report}
    predictions, explore_html = _extras(ledger, out, data, run_dir)

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
    print(figures)
    return {"test_pck": result["pck"]["all"]["overall"], "outputs": outputs}


def resume_command(argv: list[str]) -> str:
    """The one command that resumes this demo: `make demo` for the default demo, else the same arguments."""
    return "make demo" if not argv else "python -m hgpose.demo " + shlex.join(argv)


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

    model = ModelConfig(features=args.features, input_size=DEMO_MODEL.input_size)
    try:
        run_demo(args.out, args.precision, args.epochs, args.workers, train_images=args.train_images,
                 val_images=args.val_images, model=model, extras=not args.until_report)
    except (DemoInterrupted, KeyboardInterrupt) as exc:  # training saved what it had; Ctrl-C before it nothing to lose
        what = exc if isinstance(exc, DemoInterrupted) else "interrupted"
        again = resume_command(sys.argv[1:] if argv is None else argv)
        print(f"demo stopped: {what}; run `{again}` again to resume it", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
