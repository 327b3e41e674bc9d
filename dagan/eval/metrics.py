"""Evaluation metrics as pure functions of tensors (paper section 4, "Evaluation Metrics").

Segmentation accuracy of generated images (GauGAN's protocol, followed by the paper): a
segmenter (the "judge") labels each generated image and its prediction is compared with the
input label map through a confusion matrix, giving mIoU, pixel accuracy and per-class IoU.

The Fréchet distance between two feature sets (Gaussian fits: mean and covariance) is the
formula behind FID. Computed on the judge's own features it is the *judge Fréchet distance*
(``fd_judge``), never called FID: FID means the standard Inception features only (:mod:`dagan.eval.fid`).
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (ground truth, prediction) pairs: int64, shape (num_classes, num_classes + 1).

    Rows are ground-truth classes, columns predicted classes; the last column counts
    predictions outside ``[0, num_classes)`` (e.g. a pretrained segmenter's classes that map to
    no dataset class): wrong for their row, predicted pixels of no class. Target pixels outside
    ``[0, num_classes)`` (don't care, classes the judge does not evaluate) are left out.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    prediction = prediction.reshape(-1).long()
    target = target.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes)
    prediction, target = prediction[valid], target[valid]
    prediction = torch.where((prediction >= 0) & (prediction < num_classes), prediction, num_classes)
    counts = torch.bincount(target * (num_classes + 1) + prediction, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).cpu()


def _split(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, ground-truth pixels, predicted pixels) per class, float64."""
    matrix = matrix.double()
    num_classes = matrix.shape[0]
    true_positive = matrix[:, :num_classes].diagonal()
    ground_truth = matrix.sum(dim=1)
    predicted = matrix[:, :num_classes].sum(dim=0)
    return true_positive, ground_truth, predicted


def per_class_iou(matrix: torch.Tensor) -> torch.Tensor:
    """IoU of every class; NaN for classes absent from both prediction and ground truth."""
    true_positive, ground_truth, predicted = _split(matrix)
    union = ground_truth + predicted - true_positive
    iou = true_positive / union
    return torch.where(union > 0, iou, torch.full_like(iou, float("nan")))


def mean_iou(matrix: torch.Tensor) -> float:
    """Mean IoU over the classes present in the prediction or the ground truth."""
    iou = per_class_iou(matrix)
    present = ~torch.isnan(iou)
    if not present.any():
        raise ValueError("mean IoU of an empty confusion matrix: no labelled pixels were evaluated")
    return float(iou[present].mean())


def pixel_accuracy(matrix: torch.Tensor) -> float:
    """Fraction of labelled pixels whose predicted class is right."""
    true_positive, ground_truth, _ = _split(matrix)
    total = ground_truth.sum()
    if total == 0:
        raise ValueError("pixel accuracy of an empty confusion matrix: no labelled pixels were evaluated")
    return float(true_positive.sum() / total)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of (N, D) features; N >= 2."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
    values = features.detach().cpu().double().numpy()
    return values.mean(axis=0), np.cov(values, rowvar=False).reshape(values.shape[1], values.shape[1])


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigen-decomposition)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance_from_statistics(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    The trace of the matrix square root is taken as the sum of square roots of the eigenvalues
    of S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD: stable for singular covariances
    (fewer samples than dimensions) where ``scipy.linalg.sqrtm`` returns complex noise.
    """
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"feature dimensions differ: {mean_a.shape} vs {mean_b.shape}")
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    difference = mean_a - mean_b
    distance = difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of two (N, D) feature sets."""
    return frechet_distance_from_statistics(*feature_statistics(features_a), *feature_statistics(features_b))
