"""hgpose: a stacked-hourglass human pose estimator for COCO keypoints."""
__version__ = "0.1.0"


def load(checkpoint, device="cpu"):
    """A hgpose.predict.Predictor: `.predict(image, boxes=None)` -> (P, 17, 3) x, y, confidence."""
    from hgpose.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device)
