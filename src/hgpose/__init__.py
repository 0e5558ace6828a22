"""hgpose: a stacked-hourglass human pose estimator for COCO keypoints.

    import hgpose
    from hgpose.evaluate import evaluate_checkpoint
    from hgpose.train import TrainConfig, train

    run_dir = train(TrainConfig(data="data/coco", out="runs/seed"))
    metrics = evaluate_checkpoint(run_dir / "best.safetensors", "data/coco", split="val2017")
    predictor = hgpose.load(run_dir / "best.safetensors")

Bad input (a missing file, a malformed dataset or checkpoint) raises hgpose.UserError, whose
message is one line naming the file and the problem.
"""

from hgpose.runtime.files import UserError
from hgpose.runtime.version import __version__

__all__ = ["UserError", "__version__", "load"]


def load(checkpoint, device="cpu", flip_test: bool = False, decode: str = "quarter", precision: str = "auto"):
    """A hgpose.predict.Predictor for a checkpoint: `.predict(image, boxes=None)` -> (P, 17, 3) x, y,
    confidence in image pixels, one row per box (x, y, w, h; None: the whole image is one person).

    checkpoint: a .safetensors file written by `hgpose train` (its model config is in the header, so
    nothing else is needed); device: "cpu", "cuda", "cuda:1", ...; flip_test, decode ("quarter" or
    "dark") and precision ("auto", "fp32", "bf16") as for `hgpose evaluate` and `hgpose predict`, with
    their defaults, so that both give the same keypoints on the same image and box. A missing or
    malformed checkpoint raises hgpose.UserError naming the file."""
    from hgpose.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, flip_test=flip_test, decode=decode,
                                     precision=precision)
