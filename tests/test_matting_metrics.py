"""Matting errors against soft ground truth (u2net.metrics.matting) on small synthetic soft edges."""

from __future__ import annotations

import numpy as np
import pytest

from u2net.metrics.matting import (
    MattingMetrics,
    connectivity_error,
    gradient_error,
    matting_errors,
    mse_error,
    sad_error,
    unknown_band,
)

from .helpers_evaluation import soft_disc, trimap_of


def test_a_perfect_matte_has_no_error_anywhere():
    truth = soft_disc()
    errors = matting_errors(truth, truth, trimap_of(truth))
    assert set(errors) == {"sad", "mse", "grad", "conn", "sad_band", "mse_band", "grad_band", "conn_band"}
    assert all(value == pytest.approx(0.0, abs=1e-12) for value in errors.values())


def test_sad_and_mse_follow_their_definitions_over_the_region():
    truth = np.zeros((10, 10))
    alpha = np.zeros((10, 10))
    alpha[:2, :5] = 0.5  # 10 pixels off by 0.5
    band = np.zeros((10, 10), bool)
    band[:1] = True  # 5 of them inside, among 10 band pixels
    assert sad_error(alpha, truth) == pytest.approx(10 * 0.5 / 1000)
    assert sad_error(alpha, truth, band) == pytest.approx(5 * 0.5 / 1000)
    assert mse_error(alpha, truth) == pytest.approx(10 * 0.25 / 100)
    assert mse_error(alpha, truth, band) == pytest.approx(5 * 0.25 / 10)
    assert mse_error(alpha, truth, np.zeros((10, 10), bool)) == 0.0


def test_a_hard_cut_of_a_soft_edge_costs_in_the_band_and_only_there():
    truth = soft_disc()
    hard = (truth >= 0.5).astype(np.float64)
    trimap = trimap_of(truth)
    errors = matting_errors(hard, truth, trimap)
    # The errors all sit on the ramp, which the trimap's unknown band covers.
    for key in ("sad", "mse", "grad", "conn"):
        assert errors[f"{key}_band"] > 0
    assert errors["sad_band"] == pytest.approx(errors["sad"])
    assert errors["mse_band"] > errors["mse"]  # the same error over fewer pixels
    # A better matte (halfway between the hard cut and the truth) scores better on every error.
    better = matting_errors((hard + truth) / 2, truth, trimap)
    for key in ("sad", "mse", "grad", "sad_band", "mse_band", "grad_band"):
        assert better[key] < errors[key]


def test_gradient_error_sees_edge_sharpness_not_a_constant_offset():
    truth = soft_disc()
    assert gradient_error(truth + 0.3, truth) == pytest.approx(0.0)
    sharper = soft_disc(width=1.0)
    assert gradient_error(sharper, truth) > gradient_error(soft_disc(width=5.0), truth) > 0


def test_connectivity_error_counts_a_detached_blob():
    truth = soft_disc(size=64, radius=12)
    alpha = truth.copy()
    alpha[2:8, 2:8] = 1.0  # a blob cut off from the subject: not connected to it at any threshold
    assert connectivity_error(alpha, truth) > 0
    assert connectivity_error(truth, truth) == pytest.approx(0.0)


def test_unknown_band_and_size_checks():
    trimap = np.array([[0, 128], [255, 128]], np.uint8)
    assert unknown_band(trimap).tolist() == [[False, True], [False, True]]
    with pytest.raises(ValueError, match="differ in size"):
        matting_errors(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="trimap"):
        matting_errors(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((3, 4), np.uint8))


def test_dataset_means_take_uint8_maps_and_band_keys_only_with_trimaps():
    truth = soft_disc()
    metrics = MattingMetrics()
    first = metrics.update((truth * 255).round().astype(np.uint8), (truth * 255).round().astype(np.uint8))
    assert "sad_band" not in first and first["sad"] == pytest.approx(0.0)
    hard = (truth >= 0.5).astype(np.float64)
    second = metrics.update(hard, truth, trimap_of(truth))
    results = metrics.results()
    assert results["sad"] == pytest.approx((first["sad"] + second["sad"]) / 2)
    assert results["sad_band"] == pytest.approx(second["sad_band"])  # only the image with a trimap
