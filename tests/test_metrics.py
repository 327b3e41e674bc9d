"""Metrics on hand-made tensors with known values; FID/LPIPS unavailability is recorded with its reason."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dagan.eval.baseline import class_mean_colors, paint_mean_colors
from dagan.eval.fid import MetricUnavailableError, build_inception, find_weights, load_optional_metric
from dagan.eval.metrics import (
    confusion_matrix,
    frechet_distance,
    frechet_distance_from_statistics,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
)


def test_confusion_matrix_counts_and_ignores_dont_care():
    prediction = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [0, 2]])  # 2 = don't care with num_classes=2
    matrix = confusion_matrix(prediction, target, num_classes=2)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0]]
    assert per_class_iou(matrix).tolist() == [0.5, 0.5]
    assert mean_iou(matrix) == 0.5
    assert pixel_accuracy(matrix) == pytest.approx(2 / 3)


def test_accumulated_matrices_equal_one_big_batch():
    torch.manual_seed(0)
    prediction, target = torch.randint(0, 4, (2, 5, 6)), torch.randint(0, 4, (2, 5, 6))
    whole = confusion_matrix(prediction, target, 4)
    summed = confusion_matrix(prediction[:1], target[:1], 4) + confusion_matrix(prediction[1:], target[1:], 4)
    assert torch.equal(whole, summed)
    assert int(whole.sum()) == 60


def test_classes_absent_from_both_are_excluded_from_miou():
    prediction = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 0, 1, 1])
    matrix = confusion_matrix(prediction, target, num_classes=4)
    iou = per_class_iou(matrix)
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(matrix) == 1.0
    # a class only predicted (a false positive) counts with IoU 0
    matrix = confusion_matrix(torch.tensor([0, 0, 1, 3]), target, num_classes=4)
    assert per_class_iou(matrix)[3] == 0.0
    assert mean_iou(matrix) == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # class 2 still excluded


def test_predictions_outside_the_class_range_count_as_misses():
    matrix = confusion_matrix(torch.tensor([-1, 0, 5]), torch.tensor([0, 0, 1]), num_classes=2)
    assert matrix.tolist() == [[1, 0, 1], [0, 0, 1]]
    assert pixel_accuracy(matrix) == pytest.approx(1 / 3)
    assert per_class_iou(matrix).tolist() == [0.5, 0.0]


def test_empty_matrix_is_an_error():
    matrix = confusion_matrix(torch.tensor([0]), torch.tensor([9]), num_classes=2)
    with pytest.raises(ValueError, match="no labelled pixels"):
        mean_iou(matrix)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 2)


def test_frechet_distance_known_values():
    eye = np.eye(2)
    assert frechet_distance_from_statistics(np.zeros(2), eye, np.zeros(2), eye) == pytest.approx(0, abs=1e-12)
    assert frechet_distance_from_statistics(np.zeros(2), eye, np.array([3.0, 4.0]), eye) == pytest.approx(25)
    # 1-D: N(0, 1) vs N(0, 4): 1 + 4 - 2 * sqrt(4) = 1
    assert frechet_distance_from_statistics(np.zeros(1), eye[:1, :1], np.zeros(1), 4 * eye[:1, :1]) == (
        pytest.approx(1)
    )


def test_frechet_distance_matches_scipy_sqrtm_and_survives_singular_covariances():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    b = torch.randn(200, 6, generator=generator, dtype=torch.float64) * 1.5 + 0.3
    mean_a, mean_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    reference = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b) - 2 * np.trace(
        scipy.linalg.sqrtm(cov_a @ cov_b).real
    )
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-9)
    # fewer samples than dimensions: rank-deficient covariances, still finite and >= 0
    few_a, few_b = torch.randn(5, 32, generator=generator), torch.randn(5, 32, generator=generator)
    value = frechet_distance(few_a, few_b)
    assert math.isfinite(value) and value > 0
    assert frechet_distance(few_a, few_a) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(few_a[:1], few_b)


def test_mean_colour_baseline_paints_class_means():
    image = torch.tensor([[[[-1.0, 1.0], [0.0, 0.5]]]]).repeat(1, 3, 1, 1)  # grey levels
    label = torch.tensor([[[0, 0], [1, 3]]])  # 3 = don't care with num_classes 3; class 2 unseen
    colors = class_mean_colors([{"image": image, "label": label}], num_classes=3)
    overall = (-1 + 1 + 0 + 0.5) / 4
    assert colors[:, 0].tolist() == pytest.approx([0.0, 0.0, overall, overall])
    painted = paint_mean_colors(torch.tensor([[[1, 2], [0, 7]]]), colors)
    assert painted.shape == (1, 3, 2, 2)
    assert painted[0, 0].flatten().tolist() == pytest.approx([0.0, overall, 0.0, overall])


def test_missing_inception_weights_are_recorded_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    missing = tmp_path / "nowhere" / "inception.pth"
    network, reason = load_optional_metric("auto", lambda: build_inception(str(missing), download=False))
    assert network is None
    assert str(missing) in reason and "evaluate.fid=off" in reason
    network, reason = load_optional_metric("auto", lambda: build_inception("auto", download=False))
    assert network is None
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert str(expected) in reason and "download_weights=false" in reason
    with pytest.raises(MetricUnavailableError, match="weights-inception"):
        load_optional_metric("required", lambda: build_inception("auto", download=False))
    assert load_optional_metric("off", lambda: pytest.fail("off must not build")) == (None, "off in the config")


def test_files_that_are_not_plain_weights_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"fn": print}, bad)  # a pickled callable: torch.load(weights_only=True) rejects it
    with pytest.raises(MetricUnavailableError, match="weights_only=True"):
        find_weights("evil.pth", "unused", str(bad), download=False, off_key="evaluate.fid=off")
