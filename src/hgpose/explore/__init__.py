"""Instruments for looking inside a trained hourglass: analyses returning arrays (hgpose.explore.analyses)
and the self-contained HTML report of `hgpose explore` (hgpose.explore.report)."""

from hgpose.explore.analyses import (
    BranchContributions,
    Failures,
    LesionStudy,
    Occlusion,
    activations,
    branch_contributions,
    decode,
    failures,
    heatmaps,
    lesion_study,
    lesioned,
    level_resolutions,
    occlusion,
    saliency,
    saliency_share,
    stage_names,
    target_heatmaps,
    to_input_coords,
    uniform_share,
)

__all__ = [
    "BranchContributions", "Failures", "LesionStudy", "Occlusion", "activations", "branch_contributions",
    "decode", "failures", "heatmaps", "lesion_study", "lesioned", "level_resolutions", "occlusion",
    "saliency", "saliency_share", "stage_names", "target_heatmaps", "to_input_coords", "uniform_share",
    "write_explore_report",
]


def write_explore_report(*args, **kwargs):
    """See hgpose.explore.report.write_explore_report (imported lazily: it pulls in matplotlib)."""
    from hgpose.explore.report import write_explore_report as write

    return write(*args, **kwargs)
