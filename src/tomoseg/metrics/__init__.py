"""Segmentation metrics over label arrays: confusion matrix, accuracy, IoU, MATLAB-``bfscore`` boundary F1.

No torch here."""

from tomoseg.metrics.segmentation import (
    DILATION_MAX_TOLERANCE,
    ImageScore,
    ScoreSummary,
    accuracy_from_cm,
    bf1_binary,
    boundary,
    confusion_matrix,
    iou_from_cm,
    nanmean,
    score_image,
    tolerance_disk,
    within_tolerance,
)

__all__ = [
    "DILATION_MAX_TOLERANCE",
    "ImageScore",
    "ScoreSummary",
    "accuracy_from_cm",
    "bf1_binary",
    "boundary",
    "confusion_matrix",
    "iou_from_cm",
    "nanmean",
    "score_image",
    "tolerance_disk",
    "within_tolerance",
]
