"""Instruments for looking inside a trained hourglass: analyses returning arrays (hgpose.explore.analyses,
.probes, .dependency, .attribution, .calibration, .trajectory, .dissection, .receptive_field, .facing,
.stacks) and the self-contained HTML report of
`hgpose explore` (hgpose.explore.report, .compare)."""

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
    stage_batches,
    stage_names,
    stage_rms,
    target_heatmaps,
    to_input_coords,
    uniform_share,
)
from hgpose.explore.attribution import (
    RandomisationCheck,
    deletion_area,
    deletion_curve,
    input_gradient,
    integrated_gradients,
    map_correlations,
    randomisation_check,
    rank_correlation,
)
from hgpose.explore.calibration import Calibration, calibrate, pck_intervals, pooled_pck_intervals, reliability
from hgpose.explore.dependency import JointDependency, joint_dependency
from hgpose.explore.dissection import (
    Detector,
    Dissection,
    chance_levels,
    detectors,
    dissect,
    iou_interval,
    model_dissection,
    part_masks,
    random_twin,
)
from hgpose.explore.facing import (
    FacingProbes,
    facing_from_keypoints,
    facing_probes,
    known_facing,
    rate_by_confidence,
    readout_inversions,
    sample_inversions,
)
from hgpose.explore.probes import (
    PixelProbes,
    Probes,
    cka_matrix,
    linear_cka,
    linear_probes,
    model_pixel_probes,
    pixel_probes,
    pooled_stages,
)
from hgpose.explore.receptive_field import ReceptiveFields, effective_receptive_fields, theoretical_rf
from hgpose.explore.stacks import StackStudy, error_classes, stack_heatmaps, stack_study
from hgpose.explore.trajectory import TrainingTrajectory, training_trajectory

__all__ = [
    "BranchContributions", "Failures", "LesionStudy", "Occlusion", "activations", "branch_contributions",
    "decode", "failures", "heatmaps", "lesion_study", "lesioned", "level_resolutions", "occlusion",
    "saliency", "saliency_share", "stage_batches", "stage_names", "stage_rms", "target_heatmaps",
    "to_input_coords", "uniform_share", "RandomisationCheck", "deletion_area", "deletion_curve", "input_gradient",
    "integrated_gradients", "map_correlations", "randomisation_check", "rank_correlation", "Calibration",
    "calibrate", "pck_intervals", "pooled_pck_intervals", "reliability", "JointDependency", "joint_dependency",
    "PixelProbes", "Probes", "cka_matrix", "linear_cka", "linear_probes", "model_pixel_probes", "pixel_probes",
    "pooled_stages", "TrainingTrajectory", "training_trajectory",
    "Detector", "Dissection", "chance_levels", "detectors", "dissect", "iou_interval", "model_dissection", "part_masks",
    "random_twin", "FacingProbes", "facing_from_keypoints", "facing_probes", "known_facing", "rate_by_confidence",
    "readout_inversions", "sample_inversions", "ReceptiveFields", "effective_receptive_fields", "theoretical_rf",
    "StackStudy", "error_classes", "stack_heatmaps", "stack_study",
    "write_explore_report", "write_compare_report",
]


def write_explore_report(*args, **kwargs):
    """See hgpose.explore.report.write_explore_report (imported lazily: it pulls in matplotlib)."""
    from hgpose.explore.report import write_explore_report as write

    return write(*args, **kwargs)


def write_compare_report(*args, **kwargs):
    """See hgpose.explore.compare.write_compare_report (imported lazily: it pulls in matplotlib)."""
    from hgpose.explore.compare import write_compare_report as write

    return write(*args, **kwargs)
