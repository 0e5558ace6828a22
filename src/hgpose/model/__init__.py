"""The network and its language: the hourglass (hourglass), its weights on disk (weights), the
heatmap codec (heatmaps), a layer table (summary) and ONNX export (export).

The names below are the documented face (`hgpose.model.HourglassNet(ModelConfig())`,
`hgpose.model.load_model(path)`); code inside hgpose imports them from their modules."""

from hgpose.model.hourglass import HourglassNet, ModelConfig, build_model
from hgpose.model.weights import load_model, save_model

__all__ = ["HourglassNet", "ModelConfig", "build_model", "load_model", "save_model"]
