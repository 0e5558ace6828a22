"""hgpose: a stacked-hourglass human pose estimator for COCO keypoints."""
__version__ = "0.1.0"
