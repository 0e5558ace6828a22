"""Evaluation: the one inference loop and pure metrics over its outputs (PCK, COCO AP, OKS,
the error breakdown, the top-down protocol on detected boxes)."""
