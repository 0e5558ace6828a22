"""The network's stride: heatmap pixel j covers input pixels 4j..4j+3 (the stem downsamples x4), so
a 256x256 input gives 64x64 heatmaps. Data (targets on the heatmap grid) and model (its stem) both
depend on it; the pixel convention that uses it is written out in hgpose.data.transforms."""

HEATMAP_STRIDE = 4


def heatmap_to_input(points, stride: int = HEATMAP_STRIDE):
    """Heatmap pixel-centre coordinates to network-input pixel-centre coordinates: u = s (h + 0.5) - 0.5."""
    return (points + 0.5) * stride - 0.5
