"""The flip test: average a crop's heatmaps with those of its mirror image, flipped back.

How a flipped heatmap is realigned, under hgpose's pixel convention (hgpose.data.transforms): input
and heatmap pixel j are centred at coordinate j, and heatmap pixel h covers input pixels 4h..4h+3,
so input u = 4(h + 0.5) - 0.5. Mirroring an S-pixel input maps u to S - 1 - u; with H = S / 4,

    S - 1 - u = S - 1 - 4(h + 0.5) + 0.5 = 4((H - 1 - h) + 0.5) - 0.5,

i.e. heatmap pixel h of the mirrored crop is heatmap pixel H - 1 - h of the original. So flipping the
heatmap array back (torch.flip on the last axis) realigns it exactly, with no sub-pixel or one-pixel
shift (code with a corner-based convention needs one). The mirror of a left joint is a right joint,
so the channels of each left/right pair are then swapped (keypoints.flip_permutation).
"""

from __future__ import annotations

import torch

from hgpose.keypoints import flip_permutation


def flip_back(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmaps (N, K, H, W) of mirrored crops -> aligned with the original crops: mirrored in x and
    left/right channels swapped."""
    return heatmaps.flip(-1)[:, flip_permutation(heatmaps.shape[1])]


def flip_test(model, images: torch.Tensor) -> torch.Tensor:
    """(model(x) + flip_back(model(mirror(x)))) / 2 for a batch of model inputs (N, 3, S, S); one
    forward pass over both halves (batch norm is in eval mode, so samples do not interact)."""
    n = len(images)
    both = torch.cat([images, images.flip(-1)])
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and images.shape[1] > 1:
        both = both.contiguous(memory_format=torch.channels_last)  # keep the layout the caller chose
    heatmaps = model(both).float()
    return (heatmaps[:n] + flip_back(heatmaps[n:])) / 2
