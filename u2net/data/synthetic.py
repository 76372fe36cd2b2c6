"""Synthetic salient-object dataset in the DUTS layout, generated from a seed.

This is the project's built-in default dataset: it needs no download, is small enough to train
U²-Net† on a laptop CPU in minutes, and still requires learning *saliency*: every image has one
(sometimes two) high-contrast foreground objects on a cluttered background that also contains
smaller, low-contrast "distractor" shapes, so "segment any shape" is not enough.

Layout written under ``root`` (same as DUTS, so the normal dataset code reads it)::

    root/DUTS-TR/DUTS-TR-Image/synth_00000.jpg   RGB JPEG
    root/DUTS-TR/DUTS-TR-Mask/synth_00000.png    8-bit grayscale mask, soft (anti-aliased) edges
    root/DUTS-TE/DUTS-TE-Image/...               validation split
    root/DUTS-TE/DUTS-TE-Mask/...
    root/README.txt
    root/DONE                                    written last: marks a complete dataset

Command line: ``python -m u2net.data.synthetic ROOT [--num-train N] [--num-val N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

__all__ = ["ensure_synthetic_dataset", "generate_synthetic_dataset"]

# Split name -> (DUTS directory name, id mixed into the per-image seed). Distinct ids keep the
# train and val images independent streams, so the splits never share an image.
_SPLITS = {"train": ("DUTS-TR", 0), "val": ("DUTS-TE", 1)}
DONE_MARKER = "DONE"
_JPEG_QUALITY = 95
# Shapes are rasterised at this factor and area-downsampled: gives anti-aliased, sub-pixel
# accurate coverage that serves both as the compositing alpha and the mask (exact alignment).
_SUPERSAMPLE = 4
# Total foreground coverage (fraction of the image, as stored in the 8-bit mask).
_MIN_FG, _MAX_FG = 0.05, 0.50
# Minimum RGB distance between an object's colours and the background under it; distractors
# stay below _DISTRACTOR_MAX_CONTRAST, so contrast separates salient objects from clutter.
_OBJECT_MIN_CONTRAST = 110.0
_DISTRACTOR_MAX_CONTRAST = 45.0
_SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "star", "blob", "multi_ellipse")


# --------------------------------------------------------------------------- shapes


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_polygons(rng: np.random.Generator, kind: str) -> list[np.ndarray]:
    """Random shape as a list of polygons (unioned when drawn), centred near 0, radius about 1."""
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        polys = [np.stack([np.cos(t), rng.uniform(0.35, 1.0) * np.sin(t)], 1)]
    elif kind == "rectangle":
        a = rng.uniform(0.3, 1.0)
        polys = [np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)]
    elif kind == "polygon":
        # Sorted angles with positive radii give a simple (non self-intersecting) polygon.
        # Jittered, evenly spaced angles avoid degenerate slivers.
        n = int(rng.integers(3, 10))
        t = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
        r = rng.uniform(0.55, 1.0, n)
        polys = [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    elif kind == "star":
        n = int(rng.integers(4, 9))
        t = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.35, 0.65))
        polys = [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    elif kind == "blob":
        # Smooth radius function from a few low-frequency Fourier terms.
        t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0, 0.35 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = r / r.max()
        polys = [np.stack([r * np.cos(t), r * np.sin(t)], 1)]
    elif kind == "multi_ellipse":
        # A few overlapping ellipses: concave outlines such as "snowman" or "dumbbell" objects.
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        polys = []
        for _ in range(int(rng.integers(2, 4))):
            rx = rng.uniform(0.35, 0.6)
            ry = rx * rng.uniform(0.5, 1.0)
            cx, cy = rng.uniform(-0.45, 0.45, 2)
            polys.append(_rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), rng.uniform(0, np.pi)) + (cx, cy))
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    angle = rng.uniform(0, 2 * np.pi)
    return [_rotate(p, angle) for p in polys]


def _polygons_area(polys: list[np.ndarray]) -> float:
    """Sum of polygon areas (shoelace); overestimates unions, which only makes objects smaller."""
    return float(sum(abs(cv2.contourArea(p.astype(np.float32))) for p in polys))


def _render_alpha_crop(
    polys: list[np.ndarray], height: int, width: int
) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """Anti-aliased coverage in [0, 1] of the union of ``polys`` inside their bounding box.

    Returns ``(alpha, (rows, cols))`` with ``alpha`` float32 for the image region ``[rows, cols]``,
    or None when the shape lies outside the image. Only the bounding box is rasterised (at
    ``_SUPERSAMPLE``×), which keeps the many small distractor shapes cheap.
    """
    allp = np.concatenate(polys)
    x0, y0 = np.floor(allp.min(0)).astype(int)
    x1, y1 = np.ceil(allp.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    ss = _SUPERSAMPLE
    canvas = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    # Continuous image coordinates -> supersampled pixel centres; 4 fractional bits of precision.
    shift = 4
    pts = [np.round(((p - (x0, y0)) * ss - 0.5) * (1 << shift)).astype(np.int32) for p in polys]
    for q in pts:  # one call per polygon: a single fillPoly call would XOR overlapping parts
        cv2.fillPoly(canvas, [q], 255, lineType=cv2.LINE_8, shift=shift)
    small = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255), (slice(y0, y1), slice(x0, x1))


def _place(
    rng: np.random.Generator, polys: list[np.ndarray], height: int, width: int, allow_crop: bool
) -> list[np.ndarray]:
    """Translate ``polys`` to a random position, inside the image unless ``allow_crop``."""
    allp = np.concatenate(polys)
    lo, hi = allp.min(0), allp.max(0)
    ext = hi - lo
    # Allowed range for the shift so the bounding box stays inside; cropping lets ~25% bleed out.
    slack = 0.25 * ext if allow_crop else np.zeros(2)
    lo_shift = -lo - slack
    hi_shift = np.array([width, height]) - hi + slack
    shift = np.where(
        hi_shift > lo_shift,
        rng.uniform(0, 1, 2) * (hi_shift - lo_shift) + lo_shift,
        (lo_shift + hi_shift) / 2,  # object larger than the image: centre it
    )
    return [p + shift for p in polys]


# --------------------------------------------------------------------------- colours / fills


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _contrasting_color(rng: np.random.Generator, ref: np.ndarray, min_dist: float) -> np.ndarray:
    """Random RGB colour at least ``min_dist`` (Euclidean) from ``ref``."""
    for _ in range(40):
        c = _random_color(rng)
        if np.linalg.norm(c - ref) >= min_dist:
            return c
    # Fallback: the far corner of the RGB cube is always >= 127*sqrt(3) ≈ 220 away.
    return np.where(ref > 127.5, rng.uniform(0, 30, 3), rng.uniform(225, 255, 3)).astype(np.float32)


def _coords(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates as broadcastable (1×W, H×1) float32 arrays (cheaper than a meshgrid)."""
    xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + np.float32(0.5)
    yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + np.float32(0.5)
    return xx, yy


def _lerp_colors(c0: np.ndarray, c1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """H×W×3 float32 image ``c0 + (c1 - c0) * t`` for an H×W weight map ``t``.

    Built per channel and merged: numpy broadcasting over a trailing axis of 3 is several times slower.
    """
    return cv2.merge([t * np.float32(c1[k] - c0[k]) + np.float32(c0[k]) for k in range(3)])


def _over(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite ``src`` (H×W×3 image or RGB colour) over ``dst`` with H×W coverage ``alpha``."""
    return dst + (src - dst) * cv2.merge([alpha, alpha, alpha])


def _object_fill(
    rng: np.random.Generator, alpha: np.ndarray, under: np.ndarray, region: tuple[slice, slice], polys: list[np.ndarray]
) -> np.ndarray:
    """Colour patch (float32, shaped like ``under``) for an object: solid, gradient or striped,
    contrasting with the image ``under`` it (both cropped to ``region``, ``alpha`` is its coverage)."""
    w = alpha[..., None]
    local = (under * w).sum((0, 1)) / max(float(w.sum()), 1e-6)  # mean background under the object
    c1 = _contrasting_color(rng, local, _OBJECT_MIN_CONTRAST)
    xx, yy = _coords(*region)
    allp = np.concatenate(polys)
    centre, size = allp.mean(0), float(np.max(allp.max(0) - allp.min(0))) + 1.0
    theta = rng.uniform(0, np.pi)
    # Coordinate along a random direction, roughly in [-0.5, 0.5] across the object.
    u = (xx - np.float32(centre[0])) * np.float32(np.cos(theta) / size) + (yy - np.float32(centre[1])) * np.float32(
        np.sin(theta) / size
    )
    fill = rng.choice(["solid", "gradient", "stripes"], p=[0.4, 0.35, 0.25])
    if fill == "solid":
        # Gentle shading keeps "solid" objects from being perfectly flat.
        shade = np.float32(rng.uniform(-15, 15))
        return _lerp_colors(c1 - shade, c1 + shade, np.clip(u + np.float32(0.5), 0, 1))
    # Second colour: also contrasting with the background, and visibly different from c1.
    c2 = c1
    for _ in range(20):
        c2 = _contrasting_color(rng, local, _OBJECT_MIN_CONTRAST)
        if np.linalg.norm(c2 - c1) >= 60:
            break
    if fill == "gradient":
        t = np.clip(u + np.float32(0.5), 0, 1)
    else:
        period_px = rng.uniform(6, 20)
        t = np.clip(np.sin(u * np.float32(size * 2 * np.pi / period_px)) * 3, -1, 1) * 0.5 + 0.5
    return _lerp_colors(c1, c2, t)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered background (H×W×3 float32): gradient + low-frequency noise + faint distractors."""
    xx, yy = _coords(slice(0, height), slice(0, width))
    c0, c1 = _random_color(rng), _random_color(rng)
    if rng.random() < 0.7:
        theta = rng.uniform(0, 2 * np.pi)
        u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    else:  # radial gradient
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        d = np.hypot(xx - np.float32(cx), yy - np.float32(cy))
        t = d / max(float(d.max()), 1e-6)
    bg = _lerp_colors(c0, c1, t.astype(np.float32))  # float32 throughout: half the memory traffic of float64

    # Low-frequency noise: a coarse random grid upsampled smoothly, partly shared across channels.
    gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    grid = rng.standard_normal((gh, gw, 3)) * 0.5 + rng.standard_normal((gh, gw, 1))
    noise = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    bg += noise * np.float32(rng.uniform(6, 25))

    # Distractors: smaller and much lower contrast than any salient object. Blended only inside
    # their bounding boxes (full-frame blending dominated the run time).
    area = height * width
    for _ in range(int(rng.integers(4, 16))):
        polys = _shape_polygons(rng, str(rng.choice(_SHAPE_KINDS)))
        scale = np.sqrt(rng.uniform(0.002, 0.03) * area / max(_polygons_area(polys), 1e-6))
        polys = _place(rng, [p * scale for p in polys], height, width, allow_crop=True)
        crop = _render_alpha_crop(polys, height, width)
        if crop is None or not crop[0].any():
            continue
        a, region = crop
        patch = bg[region]
        local = (patch * a[..., None]).sum((0, 1)) / float(a.sum())
        direction = rng.standard_normal(3)
        color = local + direction / np.linalg.norm(direction) * rng.uniform(10, _DISTRACTOR_MAX_CONTRAST)
        bg[region] = _over(patch, color.astype(np.float32), a)
    # Thin faint lines/curves (cables, edges) so thin structure alone is not a saliency cue.
    for _ in range(int(rng.integers(0, 4))):
        pts = np.stack([rng.uniform(0, width, 3), rng.uniform(0, height, 3)], 1)
        thickness = int(rng.integers(1, 3))
        strength = np.float32(rng.uniform(0.15, 0.4))
        color = _random_color(rng)
        x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int) - 3, 0)
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 4
        region = (slice(y0, y1), slice(x0, x1))
        layer = np.zeros(bg[region].shape[:2], np.uint8)
        cv2.polylines(layer, [np.round((pts - (x0, y0)) * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, 4)
        bg[region] = _over(bg[region], color, layer.astype(np.float32) * (strength / 255))
    if rng.random() < 0.5:
        # Slightly defocused background, like a shallow depth of field in photos.
        bg = cv2.GaussianBlur(bg, (0, 0), rng.uniform(0.5, 1.5))
    return np.clip(bg, 0, 255, out=bg)


# --------------------------------------------------------------------------- one sample


def _render_sample(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 mask) pair drawn entirely from ``rng``."""
    width = int(rng.integers(min_size, max_size + 1))
    height = int(rng.integers(min_size, max_size + 1))
    while height == width and min_size < max_size:  # never square, so code can't silently assume H == W
        height = int(rng.integers(min_size, max_size + 1))
    area = height * width
    img = _background(rng, height, width)

    n_objects = 2 if rng.random() < 0.2 else 1
    for _attempt in range(20):
        # Log-uniform target coverage: small and large objects both common.
        total = float(np.exp(rng.uniform(np.log(0.07), np.log(0.42))))
        fractions = [total] if n_objects == 1 else [total * 0.6, total * 0.4]
        objects = []
        union = np.zeros((height, width), np.float32)
        for frac in fractions:
            kind = str(rng.choice(_SHAPE_KINDS))
            polys = _shape_polygons(rng, kind)
            scale = np.sqrt(frac * area / max(_polygons_area(polys), 1e-6))
            polys = _place(rng, [p * scale for p in polys], height, width, allow_crop=rng.random() < 0.15)
            crop = _render_alpha_crop(polys, height, width)
            if crop is None:
                continue
            a, region = crop
            objects.append((polys, a, region))
            union[region] = 1 - (1 - union[region]) * (1 - a)  # soft union of overlapping objects
        mask = np.round(union * 255).astype(np.uint8)
        # Check coverage on the stored 8-bit mask (cropping or overlap can change it).
        if _MIN_FG <= float(mask.mean()) / 255.0 <= _MAX_FG:
            break
    else:
        # Rare fallback that always satisfies the bounds: one centred ellipse covering ~15%.
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.sqrt(0.15 * area / np.pi)
        polys = [np.stack([width / 2 + r * np.cos(t), height / 2 + r * np.sin(t)], 1)]
        a, region = _render_alpha_crop(polys, height, width)
        objects = [(polys, a, region)]
        union = np.zeros((height, width), np.float32)
        union[region] = a
        mask = np.round(union * 255).astype(np.uint8)

    for polys, a, region in objects:
        # The image is composited with exactly the coverage stored in the mask, so they align.
        # Fill colours are chosen against the current image (background plus earlier objects).
        under = img[region]
        fill = _object_fill(rng, a, under, region, polys)
        img[region] = _over(under, fill, a)
    img += rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(1.0, 5.0))  # mild sensor noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- dataset


def _write_split(tmp: Path, split: str, count: int, seed: int, min_size: int, max_size: int, bar: tqdm) -> None:
    duts, split_id = _SPLITS[split]
    img_dir, mask_dir = tmp / duts / f"{duts}-Image", tmp / duts / f"{duts}-Mask"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for i in range(count):
        # Independent stream per image: image i does not depend on how many come before it.
        rng = np.random.default_rng([seed, split_id, i])
        img, mask = _render_sample(rng, min_size, max_size)
        name = f"synth_{i:05d}"
        if not cv2.imwrite(
            str(img_dir / f"{name}.jpg"),
            cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY],
        ):
            raise OSError(f"could not write {img_dir / name}.jpg")
        if not cv2.imwrite(str(mask_dir / f"{name}.png"), mask):
            raise OSError(f"could not write {mask_dir / name}.png")
        bar.update(1)


def generate_synthetic_dataset(
    root: str | Path,
    num_train: int = 400,
    num_val: int = 80,
    seed: int = 0,
    min_size: int = 160,
    max_size: int = 240,
    progress: bool = True,
) -> Path:
    """Generate the synthetic dataset at ``root`` (which must not exist) and return its path.

    Same arguments -> byte-identical files. Files are written to a temporary sibling directory
    that is renamed to ``root`` only when complete, so an interrupted run leaves no ``root``.
    """
    root = Path(root).expanduser().absolute()
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train} and {num_val}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if root.exists():
        raise FileExistsError(f"synthetic dataset root already exists: {root} (delete it or pick another path)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        with tqdm(
            total=num_train + num_val, desc="synthetic dataset", unit="img", disable=not progress, file=sys.stderr
        ) as bar:
            _write_split(tmp, "train", num_train, seed, min_size, max_size, bar)
            _write_split(tmp, "val", num_val, seed, min_size, max_size, bar)
        (tmp / "README.txt").write_text(
            "Synthetic salient-object dataset generated by u2net.data.synthetic "
            f"(seed={seed}, {num_train} training images in DUTS-TR, {num_val} validation images in DUTS-TE, "
            f"image sides {min_size}-{max_size} px). Each image shows one or two high-contrast foreground objects "
            "(ellipses, rectangles, polygons, stars, blobs; solid, gradient or striped fills) on a cluttered "
            "background of gradients, low-frequency noise and faint, smaller distractor shapes; masks (8-bit PNG, "
            "anti-aliased edges) mark the foreground objects only. Regenerate identically with: "
            f"python -m u2net.data.synthetic ROOT --num-train {num_train} --num-val {num_val} --seed {seed}"
            + (f" --min-size {min_size} --max-size {max_size}" if (min_size, max_size) != (160, 240) else "")
            + "\n"
        )
        params = _generator_params(num_train, num_val, seed, min_size, max_size)
        (tmp / DONE_MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")  # last file: marks completeness
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the dataset should be readable like a normal directory
        if root.exists():  # appeared while we were generating; os.rename would replace an empty dir
            raise FileExistsError(f"synthetic dataset root already exists: {root} (delete it or pick another path)")
        os.rename(tmp, root)
    except BaseException:
        # Includes KeyboardInterrupt: never leave a half-written dataset behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_synthetic_dataset(root: str | Path, progress: bool = True, **kwargs) -> Path:
    """Return ``root``, generating the dataset there first unless ``root/DONE`` exists.

    ``kwargs`` go to :func:`generate_synthetic_dataset`. A complete set made with other generator
    arguments (recorded in ``DONE``) is regenerated: it is derived data, replaced only once the new
    set is complete. An existing ``root`` without ``DONE`` (interrupted or foreign content) raises
    instead of being deleted: it may be user data.
    """
    root = Path(root).expanduser().absolute()
    marker = root / DONE_MARKER
    if marker.is_file():
        wanted = _generator_params(**kwargs)
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = None
        if found == wanted:
            return root
        print(f"{root}: synthetic set made with {found}; regenerating with {wanted}", file=sys.stderr)
        fresh = Path(tempfile.mkdtemp(prefix=f".{root.name}.new-", dir=root.parent)) / root.name
        generate_synthetic_dataset(fresh, progress=progress, **kwargs)
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        os.rename(root, old)
        os.rename(fresh, root)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(fresh.parent, ignore_errors=True)
        return root
    if root.exists():
        raise RuntimeError(
            f"{root} exists but is not a complete synthetic dataset (no {DONE_MARKER} marker); "
            "delete it to regenerate, or point the dataset root elsewhere"
        )
    return generate_synthetic_dataset(root, progress=progress, **kwargs)


def _generator_params(
    num_train: int = 400, num_val: int = 80, seed: int = 0, min_size: int = 160, max_size: int = 240
) -> dict[str, int]:
    """The generator arguments as ``DONE`` records them (defaults filled in)."""
    return {"seed": seed, "num_train": num_train, "num_val": num_val, "min_size": min_size, "max_size": max_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m u2net.data.synthetic", description="Generate the synthetic DUTS-layout saliency dataset."
    )
    p.add_argument("root", help="output directory (must not exist)")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-val", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=160)
    p.add_argument("--max-size", type=int, default=240)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    try:
        out = generate_synthetic_dataset(
            a.root, a.num_train, a.num_val, a.seed, a.min_size, a.max_size, progress=not a.no_progress
        )
    except (FileExistsError, ValueError) as e:
        p.exit(1, f"error: {e}\n")
    print(out)


if __name__ == "__main__":
    main()
