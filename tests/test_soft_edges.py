"""Soft-edge alpha (u2net.inference.soft_edges): recovers synthetic soft edges, bounded work, edge cases."""

from __future__ import annotations

import contextlib
import math

import cv2
import numpy as np
import pytest

from u2net.inference import soft_edges
from u2net.inference.soft_edges import (
    GROW_PER_HALF_WIDTH,
    MAX_SOLVE_PIXELS,
    MAX_UNKNOWN_PIXELS,
    auto_trimap,
    soft_alpha,
    solve_box,
)
from u2net.metrics.matting import matting_errors

pytest.importorskip("pymatting")


def _texture(h: int, w: int, base: tuple[int, int, int], seed: int) -> np.ndarray:
    """H×W×3 float in [0, 1]: a colour with smooth random texture (no two pixels alike, no hard edges of its own)."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, (h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    noise /= np.abs(noise).max()
    return np.clip(np.asarray(base, np.float32) / 255.0 + 0.12 * noise, 0.0, 1.0)


def _soft_disk(h: int = 320, w: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo H×W×3 uint8, true alpha H×W float, 8-bit trimap): a textured reddish disk whose alpha ramps from 1 to
    0 over 6 px, with thin half-transparent strands reaching 6 px out of it, composited over a textured blue-green
    background; the trimap's unknown band is the soft part grown by 3 px, as a matting benchmark's would be."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    edge = 0.35 * min(h, w)
    radius = np.hypot(yy - h / 2, xx - w / 2)
    alpha = np.clip((edge - radius) / 6.0 + 0.5, 0.0, 1.0)
    for angle in np.linspace(0, 2 * np.pi, 25)[:-1]:  # strands 1 px wide, alpha 0.6
        for r in np.arange(edge, edge + 6, 0.5):
            y, x = int(h / 2 + r * np.sin(angle)), int(w / 2 + r * np.cos(angle))
            alpha[y, x] = max(alpha[y, x], 0.6)
    fg, bg = _texture(h, w, (200, 70, 50), 1), _texture(h, w, (40, 140, 160), 2)
    photo = alpha[..., None] * fg + (1.0 - alpha[..., None]) * bg
    soft = ((alpha > 0) & (alpha < 1)).astype(np.uint8)
    trimap = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    trimap[cv2.dilate(soft, np.ones((7, 7), np.uint8)) > 0] = 128
    return np.rint(photo * 255).astype(np.uint8), alpha, trimap


def _model_like(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """The model's view of a matte: its 0.5 contour, blurred by ``sigma`` px (0: a hard mask), H×W float32."""
    hard = (alpha >= 0.5).astype(np.float32)
    return cv2.GaussianBlur(hard, (0, 0), sigma) if sigma > 0 else hard


# a hard mask carries no width for the growth to adapt to: its caller asks for the full growth
@pytest.mark.parametrize(
    ("sigma", "grow_per_width"), [(0.0, math.inf), (3.0, GROW_PER_HALF_WIDTH)], ids=["hard", "blurred"]
)
def test_soft_alpha_recovers_a_soft_edge_better_than_the_map(sigma: float, grow_per_width: float) -> None:
    photo, truth, trimap = _soft_disk()
    prob = _model_like(truth, sigma)
    alpha = soft_alpha(photo, prob, grow_per_width=grow_per_width)
    assert alpha.shape == truth.shape and alpha.dtype == np.float32
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    ours = matting_errors(alpha, truth, trimap)
    given = matting_errors(prob, truth, trimap)
    # the matte follows the photo's colours: a fraction of the map's errors in the soft band and over the photo
    # (measured: SAD 0.11× hard, 0.21× blurred; MSE and gradient ≤ 0.06×)
    assert ours["sad_band"] < 0.4 * given["sad_band"]
    assert ours["mse_band"] < 0.2 * given["mse_band"]
    assert ours["grad_band"] < 0.2 * given["grad_band"]
    assert ours["sad"] < 0.4 * given["sad"]


def test_outside_its_unknown_band_the_result_is_the_maps_side() -> None:
    photo, truth, _ = _soft_disk()
    prob = _model_like(truth, 3.0)
    alpha = soft_alpha(photo, prob)
    outside = auto_trimap(prob) != 128
    np.testing.assert_array_equal(alpha[outside], (prob[outside] >= 0.5).astype(np.float32))


def test_auto_trimap_grows_the_uncertain_core_more_into_the_foreground() -> None:
    prob = np.zeros((100, 400), np.float32)
    prob[:, 200:] = 1.0
    prob[:, 198:202] = 0.6  # uncertain at x = 198..201; the 0.5 contour adds x = 197, its background neighbour
    # 12 px and 4 px at a longer side of 400, whatever the core's width
    trimap = auto_trimap(prob, grow_fg=0.03, grow_bg=0.01, grow_per_width=math.inf)
    assert set(np.unique(trimap)) == {0, 128, 255}
    unknown = np.flatnonzero(trimap[50] == 128)
    assert unknown[0] == 197 - 4 and unknown[-1] == 201 + 12
    assert (trimap[:, : 197 - 4] == 0).all() and (trimap[:, 201 + 13 :] == 255).all()


def _unknown_columns(prob: np.ndarray, **growth) -> tuple[int, int]:
    """The first and last column of row 50's unknown band in ``auto_trimap(prob)``."""
    unknown = np.flatnonzero(auto_trimap(prob, **growth)[50] == 128)
    return int(unknown[0]), int(unknown[-1])


def test_the_growth_shrinks_where_the_model_draws_a_crisp_edge() -> None:
    """A vertical edge at x = 200 (background left), 400 px wide photo: 12 px / 4 px of full growth."""
    x = np.arange(400, dtype=np.float32)
    halo = np.tile(np.clip((x - 180) / 40, 0, 1), (100, 1))  # unsure from x = 181 to 219: half-width up to 20 px
    crisp = np.tile((x >= 200).astype(np.float32), (100, 1))  # only the 0.5 contour (x = 199, 200): half-width 1
    growth = {"grow_fg": 0.03, "grow_bg": 0.01}
    # a wide halo keeps most of the growth: all 4 px into the background; into the foreground, up to where the
    # core's widest half-width within 12 px (shrinking towards the core's edge) still allows it, 8 of 12 px
    assert _unknown_columns(halo, grow_per_width=math.inf, **growth) == (181 - 4, 219 + 12)
    assert _unknown_columns(halo, grow_per_width=2.0, **growth) == (181 - 4, 219 + 8)
    assert _unknown_columns(crisp, grow_per_width=math.inf, **growth) == (199 - 4, 200 + 12)
    # a crisp edge: 2 × 1 px into the foreground, 2 × 1 × 4 / 12 px into the background
    assert _unknown_columns(crisp, grow_per_width=2.0, **growth) == (199, 200 + 2)


def test_a_thin_part_the_model_is_sure_of_survives_the_matte() -> None:
    """A body with a thin leg whose colours are the background's (a dark leg on dark ground), drawn crisply by the
    model: with the full growth the whole leg is unknown and the matte fades it out; grown by the core's width it
    keeps its middle."""
    h, w = 240, 320
    truth = np.zeros((h, w), np.float32)
    truth[40:120, 80:240] = 1.0  # the body
    truth[120:220, 150:166] = 1.0  # the leg, 16 px wide: the full growth (10 px) covers it
    body = _texture(h, w, (200, 150, 90), 3)
    ground = _texture(h, w, (50, 45, 40), 4)
    leg = _texture(h, w, (56, 50, 44), 5)
    colours = np.where(truth[..., None] > 0, body, ground)
    colours[120:220, 150:166] = leg[120:220, 150:166]
    photo = np.rint(colours * 255).astype(np.uint8)
    prob = _model_like(truth, 1.0)
    middle = (slice(140, 210), slice(156, 160))
    full = soft_alpha(photo, prob, grow_per_width=math.inf)
    adapted = soft_alpha(photo, prob)
    assert full[middle].mean() < 0.7  # measured 0.55: the fixed growth's matte fades the leg
    assert adapted[middle].min() == 1.0
    assert np.abs(adapted - truth).sum() < 0.5 * np.abs(full - truth).sum()


def test_the_solve_is_capped_on_a_large_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4000×3000 photo whose map is unsure almost everywhere: the system solved stays within the caps (by the
    crop's downscaling, not by luck of timing), and the matte comes back at the photo's size."""
    h, w = 3000, 4000
    photo = np.zeros((h, w, 3), np.uint8)
    photo[..., 0] = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8)
    ramp = np.clip((np.arange(w, dtype=np.float32) - 400) / 3000, 0, 1)  # unsure from x = 400 to 3400
    prob = np.tile(ramp, (h, 1))
    seen = []

    def spy(image, trimap, small_prob, *args):
        seen.append((image.shape, int((trimap == 128).sum())))
        return np.where(trimap == 255, 1.0, np.where(trimap == 0, 0.0, small_prob))

    monkeypatch.setattr(soft_edges, "_closed_form", spy)
    alpha = soft_alpha(photo, prob)
    assert alpha.shape == (h, w)
    [(shape, unknown)] = seen
    assert shape[0] * shape[1] <= MAX_SOLVE_PIXELS * 1.01 and unknown <= MAX_UNKNOWN_PIXELS * 1.01
    assert shape[2] == 3


def test_solve_box_scale_and_margin() -> None:
    trimap = np.zeros((3000, 4000), np.uint8)
    trimap[1000:2000, 1000:3000] = 128  # 2 MP unknown
    box, scale = solve_box(trimap)
    x0, y0, x1, y1 = box
    assert scale == pytest.approx((MAX_UNKNOWN_PIXELS / 2_000_000) ** 0.5, rel=0.01)
    assert x0 < 1000 and y0 < 1000 and x1 > 3000 and y1 > 2000  # a margin of known pixels all round
    small = np.zeros((50, 60), np.uint8)
    small[20:30, 20:40] = 128
    assert solve_box(small) == ((16, 16, 44, 34), 1.0)  # small: solved at full resolution, margin 4 px
    assert solve_box(np.zeros((50, 60), np.uint8)) is None


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5], ids=["all-background", "all-foreground", "all-unsure"])
def test_a_map_without_both_sure_sides_is_returned_unchanged(value: float) -> None:
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    prob = np.full((40, 50), value)  # float64: comes back as float32
    alpha = soft_alpha(photo, prob)
    assert alpha.dtype == np.float32
    np.testing.assert_array_equal(alpha, prob.astype(np.float32))


def test_mismatched_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="same size"):
        soft_alpha(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11), np.float32))


class _FixedMap:
    """A predictor stand-in whose every view sees the same 64² map: a blurred disc (what the remover is given)."""

    input_size = 64
    fixed_size = None

    def __init__(self, prob: np.ndarray) -> None:
        self.logits = np.log(np.clip(prob, 1e-4, 1 - 1e-4) / (1 - np.clip(prob, 1e-4, 1 - 1e-4))).astype(np.float32)

    def preprocess(self, rgb: np.ndarray, resize: str | None = None) -> np.ndarray:
        return np.zeros((3, 64, 64), np.float32)

    def predict_batch(self, batch: np.ndarray, sizes=None) -> list[np.ndarray]:
        return [1 / (1 + np.exp(-self.logits)) for _ in range(len(batch))]


def test_the_soft_preset_mattes_the_remover_output() -> None:
    """``--quality soft`` (RemovalOptions.soft_edges): the remover's alpha gets the matte's soft edge where the
    other presets keep the model's blur; with a threshold the hard mask wins."""
    from u2net.inference import BackgroundRemover, RemovalOptions

    photo, truth, trimap = _soft_disk(128, 128)
    small = cv2.resize(_model_like(truth, 0.0), (64, 64), interpolation=cv2.INTER_AREA)
    remover = BackgroundRemover(_FixedMap(cv2.GaussianBlur(small, (0, 0), 1.5)))
    soft = np.asarray(remover.remove(photo, RemovalOptions.preset("soft", mask_only=True)), np.float32) / 255
    best = np.asarray(remover.remove(photo, RemovalOptions.preset("best", mask_only=True)), np.float32) / 255
    assert matting_errors(soft, truth, trimap)["sad_band"] < matting_errors(best, truth, trimap)["sad_band"]
    hard = remover.remove(photo, RemovalOptions.preset("soft", mask_only=True, threshold=0.5))
    assert set(np.unique(np.asarray(hard))) <= {0, 255}
    cutout = remover.remove(photo, RemovalOptions.preset("soft"))
    assert cutout.mode == "RGBA" and cutout.size == (128, 128)


# -- pymatting's retries stay off stdout, where `u2net remove IN -` writes the cut-out --------------------------
def _posterised_disk() -> tuple[np.ndarray, np.ndarray]:
    """(photo, true alpha) of :func:`_soft_disk` with its colours cut to 8 levels a channel: flat patches whose
    matting Laplacian needs a diagonal shift before incomplete Cholesky succeeds (measured: a zero shift fails)."""
    photo, truth, _ = _soft_disk()
    return photo // 32 * 32, truth


def test_alpha_matting_prints_nothing_on_stdout(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from u2net.inference import refine

    photo, truth = _posterised_disk()
    mask = np.rint(_model_like(truth, 2.0) * 255).astype(np.uint8)
    with monkeypatch.context() as unguarded:  # this photo makes pymatting print: what the guard is for
        unguarded.setattr(refine, "pymatting_quiet", contextlib.nullcontext())
        refine.alpha_matting(photo, mask)
        assert "PERFORMANCE WARNING" in capsys.readouterr().out
    alpha, colours = refine.alpha_matting(photo, mask)
    assert colours is not None and 0 < alpha.mean() < 255
    assert capsys.readouterr().out == ""


def test_soft_edges_print_nothing_on_stdout(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    photo, truth = _posterised_disk()
    monkeypatch.setattr(soft_edges, "ICHOL_SHIFTS", (0.0, *soft_edges.ICHOL_SHIFTS))  # a shift that fails here
    with monkeypatch.context() as unguarded:
        unguarded.setattr(soft_edges, "pymatting_quiet", contextlib.nullcontext())
        soft_alpha(photo, _model_like(truth, 3.0))
        assert "PERFORMANCE WARNING" in capsys.readouterr().out
    soft_alpha(photo, _model_like(truth, 3.0))
    assert capsys.readouterr().out == ""
