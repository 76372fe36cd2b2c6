"""Checks for u2net.losses against hand computations and independent implementations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from u2net.losses import DeepSupervisionLoss, bce_with_logits, soft_iou_loss, ssim
from u2net.losses import _ssim_map as ssim_map


def _outputs(n: int = 7, shape: tuple[int, ...] = (2, 1, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [3 * torch.randn(shape, generator=g) for _ in range(n)]


def _target(shape: tuple[int, ...] = (2, 1, 16, 16), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) > 0.5).float()


# --- BCE -------------------------------------------------------------------------------------------------------------


def test_bce_matches_hand_computation() -> None:
    # p = sigmoid(logit): 0 -> 1/2, ln 3 -> 3/4, -ln 3 -> 1/4, 2 -> 1/(1+e^-2)
    logits = torch.tensor([[[[0.0, math.log(3)], [-math.log(3), 2.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.5]]]])
    p4 = 1 / (1 + math.exp(-2))
    terms = [
        -math.log(0.5),  # t=1, p=1/2
        -math.log(1 - 0.75),  # t=0, p=3/4
        -math.log(0.25),  # t=1, p=1/4
        -(0.5 * math.log(p4) + 0.5 * math.log(1 - p4)),  # soft target 0.5
    ]
    expected = sum(terms) / 4
    got = bce_with_logits(logits, target)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_bce_total_equals_original_bceloss_sum_over_seven_outputs() -> None:
    # Original U²-Net: bce = nn.BCELoss(size_average=True); loss = sum_i bce(sigmoid(d_i), labels), d0..d6.
    outputs, target = _outputs(), _target()
    bce = nn.BCELoss(reduction="mean")
    expected = sum(bce(torch.sigmoid(d), target) for d in outputs)
    total, per = DeepSupervisionLoss()(outputs, target)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert per.shape == (7,)
    for d, got in zip(outputs, per):
        assert got.item() == pytest.approx(bce(torch.sigmoid(d), target).item(), rel=1e-5)


def test_bce_finite_for_huge_logits() -> None:
    # log(sigmoid(-200)) underflows to -inf in float32; the logits form must not.
    logits = torch.tensor([[[[-200.0, 200.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert bce_with_logits(logits, target).item() == pytest.approx(200.0, rel=1e-6)


# --- weights ---------------------------------------------------------------------------------------------------------


def test_weights_scale_per_output_terms() -> None:
    outputs, target = _outputs(), _target()
    _, per = DeepSupervisionLoss()(outputs, target)
    weights = [2.0, 0.0, 1.0, 0.5, 3, 1, 0.25]  # ints allowed (Hydra)
    total, per_w = DeepSupervisionLoss(weights=weights)(outputs, target)
    # Per-output losses are reported unweighted ...
    torch.testing.assert_close(per_w, per)
    # ... and the total is their weighted sum, computed here in float64.
    expected = sum(w * p for w, p in zip(weights, per.double().tolist()))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # A zero weight removes an output's contribution: changing output 1 leaves the total unchanged.
    outputs2 = list(outputs)
    outputs2[1] = -outputs[1]
    assert DeepSupervisionLoss(weights=weights)(outputs2, target)[0].item() == pytest.approx(total.item(), rel=1e-6)


def test_weights_accept_listconfig() -> None:
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"weights": [1, 1, 1, 1, 1, 1, 2]})
    loss = DeepSupervisionLoss(weights=cfg.weights)
    assert loss.weights == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0)


def test_weight_count_mismatch_raises() -> None:
    loss = DeepSupervisionLoss(weights=[1.0] * 6)
    with pytest.raises(ValueError, match=r"6 weights.*7 outputs"):
        loss(_outputs(7), _target())


def test_unknown_kind_raises() -> None:
    with pytest.raises(ValueError, match=r"'focal'.*bce.*hybrid"):
        DeepSupervisionLoss(kind="focal")


@pytest.mark.parametrize("window", [0, 4, -3])
def test_bad_ssim_window_raises(window: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        DeepSupervisionLoss(kind="hybrid", ssim_window=window)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        bce_with_logits(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_bare_tensor_is_one_output() -> None:
    out, target = _outputs(1)[0], _target()
    total, per = DeepSupervisionLoss()(out, target)
    assert per.shape == (1,)
    assert total.item() == pytest.approx(nn.BCELoss()(torch.sigmoid(out), target).item(), rel=1e-5)


# --- soft IoU --------------------------------------------------------------------------------------------------------


def test_iou_hand_computation_is_per_image_then_batch_mean() -> None:
    logits = torch.zeros(2, 1, 2, 2)  # p = 1/2 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # Image 0: I = 2 * 1/2 = 1, U = sum p + sum t - I = 2 + 2 - 1 = 3 -> loss 2/3.
    # Image 1: I = 4 * 1/2 = 2, U = 2 + 4 - 2 = 4 -> loss 1/2.
    # Batch mean 7/12 (pooling the sums over the batch would give 1 - 3/7 = 4/7 instead).
    assert soft_iou_loss(logits, target).item() == pytest.approx(7 / 12, abs=1e-6)


def test_iou_zero_for_perfect_and_one_for_fully_wrong() -> None:
    target = _target()
    perfect = 50.0 * (2 * target - 1)  # +50 on foreground, -50 on background
    assert soft_iou_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_iou_loss(-perfect, target).item() == pytest.approx(1.0, abs=1e-6)
    # An image with an empty target predicted empty is perfect too (no 0/0).
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_iou_loss(torch.full_like(empty, -200.0), empty).item() == pytest.approx(0.0, abs=1e-6)


# --- SSIM ------------------------------------------------------------------------------------------------------------


def test_ssim_window_one_matches_hand_formula() -> None:
    # With a 1×1 window the local means are the pixels and the variances vanish, so
    # SSIM = (2xy + C1) / (x² + y² + C1) per pixel.
    x = torch.tensor([[[[0.2, 0.9], [0.5, 0.0]]]])
    y = torch.tensor([[[[0.4, 0.9], [0.1, 0.3]]]])
    c1 = 0.01**2
    vals = [(2 * a * b + c1) / (a * a + b * b + c1) for a, b in zip(x.flatten().tolist(), y.flatten().tolist())]
    assert ssim(x, y, window=1).item() == pytest.approx(sum(vals) / 4, rel=1e-5)


def test_ssim_identical_is_one_and_decreases_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 32, 32, generator=g)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-5)
    scores = []
    for sigma in (0.02, 0.1, 0.3):
        noisy = (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)
        scores.append(ssim(noisy, img).item())
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_map_interior_matches_skimage() -> None:
    # skimage: Gaussian sigma 1.5 truncated at 3.5 sigma = 11×11 window, population covariance, data range 1.
    # It handles borders differently (reflection) so only the interior, 5 px from each edge, is compared.
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    _, ref = metrics.structural_similarity(
        x[0, 0].numpy(),
        y[0, 0].numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    ours = ssim_map(x, y)[0, 0].double()
    torch.testing.assert_close(ours[5:-5, 5:-5], torch.from_numpy(ref[5:-5, 5:-5]), atol=1e-5, rtol=1e-4)


def test_ssim_map_borders_match_zero_padded_gaussian_convolution() -> None:
    # The separable blur must equal BASNet's 11×11 Gaussian convolution with zero padding everywhere,
    # borders included, on a non-square map with several channels.
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 17, 29, generator=g)
    y = (torch.rand(2, 3, 17, 29, generator=g) > 0.5).float()
    coords = torch.arange(11, dtype=torch.float32) - 5
    g1 = torch.exp(-(coords**2) / (2 * 1.5**2))
    g1 = g1 / g1.sum()
    kernel = torch.outer(g1, g1).expand(3, 1, 11, 11)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, kernel, padding=5, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    torch.testing.assert_close(ssim_map(x, y), expected, atol=1e-5, rtol=1e-4)


# --- hybrid ----------------------------------------------------------------------------------------------------------


def test_hybrid_total_is_weighted_sum_of_parts() -> None:
    outputs, target = _outputs(7, (2, 1, 24, 24)), _target((2, 1, 24, 24))
    weights = [1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    loss = DeepSupervisionLoss(
        kind="hybrid", weights=weights, bce_weight=2.0, iou_weight=0.5, ssim_weight=3.0, ssim_window=7
    )
    total, per = loss(outputs, target)
    expected_per = []
    for o in outputs:
        p = torch.sigmoid(o)
        bce = nn.BCELoss()(p, target).item()
        iou = soft_iou_loss(o, target).item()
        s = ssim(p, target, window=7).item()
        expected_per.append(2.0 * bce + 0.5 * iou + 3.0 * (1.0 - s))
    assert per.tolist() == pytest.approx(expected_per, rel=1e-5)
    assert total.item() == pytest.approx(sum(w * e for w, e in zip(weights, expected_per)), rel=1e-5)


def test_hybrid_defaults_are_bce_iou_and_ssim_as_in_basnet() -> None:
    outputs, target = _outputs(2), _target()
    _, per = DeepSupervisionLoss(kind="hybrid")(outputs, target)
    for o, got in zip(outputs, per):
        expected = nn.BCELoss()(torch.sigmoid(o), target) + soft_iou_loss(o, target)
        expected = expected + 1 - ssim(torch.sigmoid(o), target)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# --- gradients / autocast --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bce", "hybrid"])
def test_gradients_flow_and_are_finite_under_bf16_autocast(kind: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 7, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    target = _target()
    loss_fn = DeepSupervisionLoss(kind=kind, ssim_weight=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16  # autocast really is active
        outputs = list(logits.split(1, dim=1))
        total, per = loss_fn(outputs, target)
    assert total.dtype == torch.float32 and per.dtype == torch.float32
    assert not per.requires_grad  # logged values do not hold the graph
    total.backward()
    for p in conv.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # The loss is computed in float32 even inside autocast: same value as outside it on the same logits.
    ref_total, _ = loss_fn([o.detach().float() for o in outputs], target)
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-6)


def test_gradient_matches_finite_difference() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 1, 12, 12, generator=g, dtype=torch.float64)
    target = torch.rand(1, 1, 12, 12, generator=g, dtype=torch.float64)
    loss_fn = DeepSupervisionLoss(kind="hybrid", ssim_weight=1.0, ssim_window=5)
    logits.requires_grad_(True)
    loss_fn([logits], target)[0].backward()
    i = (0, 0, 6, 6)
    h = 1e-2  # large enough that float32 rounding stays well below the tolerance
    with torch.no_grad():
        plus, minus = logits.clone(), logits.clone()
        plus[i] += h
        minus[i] -= h
        numeric = (loss_fn([plus], target)[0] - loss_fn([minus], target)[0]).item() / (2 * h)
    # Losses run in float32, so the tolerance is loose.
    assert logits.grad[i].item() == pytest.approx(numeric, rel=2e-2, abs=1e-5)
