"""The image operations of background removal in NumPy, each matching the OpenCV call it replaces
(``tests/test_imageops.py`` holds them to it), so that the base install runs without OpenCV; and
:func:`opencv`, the one lazy import of OpenCV for the operations we did not write (area and bicubic
resizes, soft edges' distance transform), which names the extra that brings it when it is missing.

- :func:`resize_linear`: ``cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)``; bit-identical on uint8
  (OpenCV's fixed-point arithmetic reproduced), within 1e-5 on float32 (2e-7 of the x86 wheels' IPP code).
- :func:`label_components`, :func:`component_areas`: ``cv2.connectedComponentsWithStats(m, connectivity=8)``;
  the same labels up to their numbering, the same areas.
- :func:`ellipse`, :func:`dilate`, :func:`erode`, :func:`opening`, :func:`closing`: binary morphology as
  ``cv2.getStructuringElement(cv2.MORPH_ELLIPSE, ...)``, ``cv2.dilate`` / ``cv2.erode`` / ``cv2.morphologyEx``
  with their default borders (nothing outside the image counts): bit-identical.
- :func:`box_mean`: ``cv2.boxFilter(x, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)``, within 1e-5.
- :func:`rgb_to_gray`: ``cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)``; bit-identical on uint8.

Layer 0 with the rest of :mod:`u2net.data`: NumPy only, no torch.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from ..errors import require_extra

__all__ = [
    "box_mean",
    "closing",
    "component_areas",
    "dilate",
    "ellipse",
    "erode",
    "label_components",
    "opencv",
    "opening",
    "resize_linear",
    "rgb_to_gray",
]


def opencv(purpose: str, extra: str = "opencv") -> ModuleType:
    """OpenCV (``cv2``), imported now, for ``purpose``; :class:`~u2net.errors.MissingExtraError` (one line
    naming ``extra``) when it is not installed. The one way our code reaches OpenCV on the removal path."""
    require_extra(purpose, extra, cv2="opencv-python-headless")
    import cv2

    return cv2


# -- bilinear resize ---------------------------------------------------------------------------------------
_COEF_SCALE = np.float32(2048)  # OpenCV's 8-bit bilinear weights are 11-bit fixed point: 1.0 = 2048
_ROWS_PER_BLOCK = 256  # the vertical pass in blocks of output rows: bounded temporaries on 24 MP outputs


def _linear_taps(src: int, dst: int, clamp: bool, single: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps from ``src`` samples to ``dst`` (half-pixel centres): for each output sample the two source
    indices, clamped to the image (the border replicated), and the second one's weight. ``clamp``: a sample
    beyond the first or last centre takes that pixel alone, as OpenCV's horizontal pass does (its vertical pass
    keeps both weights on the clamped row, which rounds differently in 8 bits). ``single``: positions rounded
    to float32, as OpenCV's own code does; the x86 wheels hand float images to Intel IPP, which keeps doubles."""
    position = (np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5
    if single:
        position = position.astype(np.float32)
    first = np.floor(position).astype(np.int64)
    weight = position - first
    if clamp:
        weight[(first < 0) | (first >= src - 1)] = 0.0
    return np.clip(first, 0, src - 1), np.clip(first + 1, 0, src - 1), weight


def _tap_weights(weight: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(first, second) tap weights: for uint8 OpenCV's 11-bit fixed point (from float32), else in ``dtype``."""
    if dtype == np.uint8:
        weight = weight.astype(np.float32)
        return np.rint((1 - weight) * _COEF_SCALE).astype(np.int32), np.rint(weight * _COEF_SCALE).astype(np.int32)
    weight = weight.astype(dtype)
    return 1 - weight, weight


def resize_linear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An H×W or H×W×C image (uint8 or float) resized bilinearly to ``size`` = (h, w), as
    ``cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)``: half-pixel centres, the border replicated,
    no anti-aliasing when shrinking. uint8 goes through OpenCV's fixed-point weights and roundings (the same to
    the bit); floats are computed in their own precision, with the sample positions in double as the x86 wheels'
    IPP code places them (within 2e-7 of it on float32 in [0, 1]; OpenCV's own code rounds them to float32, a
    difference of up to 2.5e-5 × the step between neighbouring pixels)."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"cannot resize an image of shape {image.shape} to {(h, w)}")
    uint8 = image.dtype == np.uint8
    if not uint8 and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"resize_linear takes uint8 or float images, got {image.dtype}")
    if image.shape[:2] == (h, w):
        return image.copy()
    x0, x1, fx = _linear_taps(image.shape[1], w, clamp=True, single=uint8)
    y0, y1, fy = _linear_taps(image.shape[0], h, clamp=False, single=uint8)
    (ax0, ax1), (by0, by1) = _tap_weights(fx, image.dtype), _tap_weights(fy, image.dtype)
    channels = (None,) * (image.ndim - 2)  # the weights broadcast over a channel axis
    # only the source rows some output row reads go through the horizontal pass (2 per row when shrinking)
    rows, which = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    source = image[rows].astype(np.int32) if uint8 else image[rows]
    across = source[:, x0] * ax0[(slice(None), *channels)] + source[:, x1] * ax1[(slice(None), *channels)]
    if uint8:  # scaled by 2048²: OpenCV's vertical pass drops 4 bits, keeps each product's high 16, then rounds
        across >>= 4
    out = np.empty((h, w, *image.shape[2:]), image.dtype)
    for start in range(0, h, _ROWS_PER_BLOCK):
        block = slice(start, start + _ROWS_PER_BLOCK)
        top, bottom = across[which[: len(y0)][block]], across[which[len(y0) :][block]]
        b0, b1 = by0[block][(slice(None), None, *channels)], by1[block][(slice(None), None, *channels)]
        if uint8:
            out[block] = np.clip((((top * b0) >> 16) + ((bottom * b1) >> 16) + 2) >> 2, 0, 255)
        else:
            out[block] = top * b0 + bottom * b1
    return out


# -- connected components ----------------------------------------------------------------------------------
def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of an H×W bool mask, in raster order: (row, first column, column after the last),
    each of shape (runs,)."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), bool)  # a clear pixel before and after each row: no run crosses rows
    padded[:, 1:-1] = mask
    flat = padded.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # alternately a run's first pixel and the one after it
    row = changes[::2] // (w + 2)
    return row, changes[::2] - row * (w + 2) - 1, changes[1::2] - row * (w + 2) - 1


def _touching_runs(row: np.ndarray, start: np.ndarray, end: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of runs that touch with 8-connectivity, ``a`` in the row above ``b``: columns overlapping
    or diagonal neighbours. Run order is raster order, so the runs above ``b`` that touch it are consecutive:
    found with two binary searches on (row, column) keys."""
    stride = w + 2
    above = (row - 1) * stride
    first = np.searchsorted(row * stride + end, above + start, "left")  # the first above ending at b's start or later
    last = np.searchsorted(row * stride + start, above + end, "right")  # past the last above starting by b's end
    counts = np.maximum(last - first, 0)
    b = np.repeat(np.arange(len(row)), counts)
    offsets = np.arange(len(b)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(first, counts) + offsets, b


def _component_of_runs(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each of ``count`` nodes with edges (a, b), its component's smallest node (union-find, vectorised:
    each round hooks every root to the smallest root it has an edge to, then compresses the trees fully; the
    number of trees of a component at least halves every two rounds, whatever its shape)."""
    parent = np.arange(count)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def _components(mask: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """(the runs, each run's component 0…K-1 numbered in raster order of their first pixel, the K areas)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"connected components need an H×W mask, got shape {mask.shape}")
    row, start, end = runs = _runs(mask != 0)
    root = _component_of_runs(len(row), *_touching_runs(row, start, end, mask.shape[1]))
    component = (np.cumsum(root == np.arange(len(root))) - 1)[root]  # roots are first runs: raster order
    areas = np.bincount(component, weights=end - start).astype(np.int64) if len(row) else np.zeros(0, np.int64)
    return runs, component, areas


def component_areas(mask: np.ndarray) -> np.ndarray:
    """The pixel count of each 8-connected component of an H×W mask's non-zero pixels (K,) int64, in raster
    order of their first pixel: ``stats[1:, cv2.CC_STAT_AREA]`` of ``cv2.connectedComponentsWithStats(mask,
    connectivity=8)`` up to its order."""
    return _components(mask)[2]


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H×W int32 labels: 0 background, 1…K the 8-connected components of the non-zero pixels in raster order
    of their first pixel; their K areas, int64): ``cv2.connectedComponentsWithStats(mask, connectivity=8)``'s
    labels up to their numbering and ``stats[1:, cv2.CC_STAT_AREA]`` in the same order."""
    (row, start, end), component, areas = _components(mask)
    h, w = np.shape(mask)
    # each run as +label at its first pixel and -label after its last, summed along the flattened rows
    steps = np.zeros(h * (w + 1) + 1, np.int32)
    label = component.astype(np.int32) + 1
    steps[row * (w + 1) + start] = label
    steps[row * (w + 1) + end] -= label
    labels = np.cumsum(steps[:-1], dtype=np.int32).reshape(h, w + 1)[:, :w]
    return np.ascontiguousarray(labels), areas


# -- binary morphology, on rows packed 64 pixels to a word -----------------------------------------------
def ellipse(size: int) -> np.ndarray:
    """The size×size elliptical structuring element (uint8 0/1) of ``cv2.getStructuringElement(
    cv2.MORPH_ELLIPSE, (size, size))``, with OpenCV's roundings."""
    if size < 1:
        raise ValueError(f"a structuring element needs a size of at least 1, got {size}")
    r = c = size // 2
    inverse = 1.0 / (r * r) if r else 0.0
    element = np.zeros((size, size), np.uint8)
    for i in range(size):
        reach = int(np.rint(c * math.sqrt((r * r - (i - r) ** 2) * inverse)))  # cvRound: halves to even
        element[i, max(c - reach, 0) : min(c + reach + 1, size)] = 1
    return element


class _Packed:
    """Where an H×W mask's pixels sit in packed rows of uint64 words: pixel x is bit (x + 64·margin) % 64 of word
    (x + 64·margin) // 64, so that a shift or an OR moves or combines 64 pixels at once. ``margin`` clear words
    before each row hold what an operation reads left of the image; every bit outside the image is kept clear."""

    def __init__(self, w: int, margin: int) -> None:
        self.w, self.margin = w, margin
        self.words = margin + -(-w // 64)

    def pack(self, mask: np.ndarray) -> np.ndarray:
        packed = np.zeros((mask.shape[0], self.words * 8), np.uint8)
        start = self.margin * 8
        packed[:, start : start + -(-self.w // 8)] = np.packbits(mask != 0, axis=1, bitorder="little")
        return packed.view("<u8")

    def unpack(self, words: np.ndarray) -> np.ndarray:
        inside = np.ascontiguousarray(words[:, self.margin :]).view(np.uint8)
        return np.unpackbits(inside, axis=1, count=self.w, bitorder="little").view(bool)

    def clear_outside(self, words: np.ndarray) -> np.ndarray:
        """``words`` with every bit outside the image cleared (in place)."""
        words[:, : self.margin] = 0
        if self.w % 64:
            words[:, -1] &= np.uint64((1 << (self.w % 64)) - 1)
        return words


def _shift(words: np.ndarray, by: int) -> np.ndarray:
    """Packed rows moved ``by`` pixels along x (out[x] = in[x - by]), clear bits shifted in."""
    if by == 0:
        return words
    n = words.shape[1]
    whole, bits = divmod(abs(by), 64)
    out = np.zeros_like(words)
    if whole >= n:
        return out
    if by > 0:  # towards higher x: within a word, towards its higher bits; the carry from the word before
        src, dst = words[:, : n - whole], out[:, whole:]
        dst[:] = src << np.uint64(bits)
        if bits:
            dst[:, 1:] |= src[:, :-1] >> np.uint64(64 - bits)
    else:
        src, dst = words[:, whole:], out[:, : n - whole]
        dst[:] = src >> np.uint64(bits)
        if bits:
            dst[:, :-1] |= src[:, 1:] << np.uint64(64 - bits)
    return out


def _row_runs(element: np.ndarray) -> list[tuple[int, int, int]]:
    """The element's ones as (row, first column, length) runs."""
    runs = []
    for i, line in enumerate(np.asarray(element) != 0):
        edges = np.flatnonzero(np.diff(np.concatenate([[False], line, [False]]).astype(np.int8)))
        runs += [(i, int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]
    return runs


def _or_over(words: np.ndarray, element: np.ndarray) -> np.ndarray:
    """out[y, x] = OR over the element's ones (i, j) of in[y + i - ay, x + j - ax], nothing outside the image
    set; (ay, ax) is the element's centre, OpenCV's default anchor. Per run of ones in a row of the element:
    the OR of ``length`` consecutive pixels (built up by doubling from shorter ones, each length once), moved
    to the run's offset, then ORed in with the row's vertical offset."""
    kh, kw = element.shape
    spans = {1: words}  # length -> OR of in[x … x + length - 1]
    moved: dict[tuple[int, int], np.ndarray] = {}
    out = np.zeros_like(words)
    h = words.shape[0]
    for i, j, length in _row_runs(element):
        dy = i - kh // 2
        if abs(dy) >= h:  # a row of the element that reaches no row of the image
            continue
        if (j, length) not in moved:
            have = max(k for k in spans if k <= length)
            span = spans[have]
            while have < length:
                step = min(have, length - have)
                span = span | _shift(span, -step)
                have += step
                spans[have] = span
            moved[(j, length)] = _shift(span, kw // 2 - j)
        source = moved[(j, length)]
        if dy >= 0:
            out[: h - dy] |= source[dy:]
        else:
            out[-dy:] |= source[: h + dy]
    return out


def _morphology(mask: np.ndarray, element: np.ndarray, steps: tuple[str, ...]) -> np.ndarray:
    """``mask`` (H×W, non-zero: set) through ``steps`` ("dilate", "erode") with ``element`` (0/1), as H×W bool."""
    mask, element = np.asarray(mask), np.asarray(element)
    if mask.ndim != 2 or element.ndim != 2 or min(mask.shape) < 1 or min(element.shape) < 1:
        raise ValueError(f"morphology needs an H×W mask and a 2-D element, got {mask.shape} and {element.shape}")
    layout = _Packed(mask.shape[1], margin=-(-(element.shape[1] // 2) // 64))  # reads reach kw // 2 to the left
    words = layout.pack(mask)
    for step in steps:
        if step == "dilate":
            words = layout.clear_outside(_or_over(words, element))
        else:  # erosion is the complement's dilation, complemented: outside the image counts as set (OpenCV's)
            words = layout.clear_outside(~_or_over(layout.clear_outside(~words), element))
    return layout.unpack(words)


def dilate(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """H×W bool: ``cv2.dilate(mask, element) > 0`` for a binary mask (non-zero: set) and a 0/1 element."""
    return _morphology(mask, element, ("dilate",))


def erode(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """H×W bool: ``cv2.erode(mask, element) > 0`` for a binary mask (the outside counts as set)."""
    return _morphology(mask, element, ("erode",))


def opening(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """H×W bool: ``cv2.morphologyEx(mask, cv2.MORPH_OPEN, element) > 0`` (erosion, then dilation)."""
    return _morphology(mask, element, ("erode", "dilate"))


def closing(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """H×W bool: ``cv2.morphologyEx(mask, cv2.MORPH_CLOSE, element) > 0`` (dilation, then erosion)."""
    return _morphology(mask, element, ("dilate", "erode"))


# -- the guided filter's pieces ----------------------------------------------------------------------------
def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The mean of an H×W float array over (2·radius+1)² windows, the edges mirrored with their edge pixel
    repeated (``cv2.boxFilter(x, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)``): running sums
    in float64, as OpenCV sums floats, returned in ``x``'s dtype."""
    size = 2 * radius + 1
    sums = np.asarray(x)
    for axis in (0, 1):
        # the indices mirrored (numpy's "symmetric" is OpenCV's BORDER_REFLECT), one more before: the window of
        # output i is then the difference of the running sums at i + size and at i
        mirrored = np.pad(np.arange(sums.shape[axis]), (radius + 1, radius), mode="symmetric")
        running = np.take(sums, mirrored, axis=axis).astype(np.float64, copy=False)
        np.cumsum(running, axis=axis, out=running)  # in place: 24 MP photos
        ahead, behind = (running[size:], running[:-size]) if axis == 0 else (running[:, size:], running[:, :-size])
        sums = np.subtract(ahead, behind, dtype=np.float64)
    sums *= 1.0 / (size * size)
    return sums.astype(x.dtype, copy=False)


# ITU-R BT.601 luma (R, G, B): for uint8 in 15-bit fixed point, what OpenCV 4.14 computes to the bit (14-bit
# weights would differ by one level in 0.3 % of pixels); for floats OpenCV's float weights
_GRAY_FIXED = (9798, 19235, 3735)
_GRAY_SHIFT = 15
_GRAY_FLOAT = (0.299, 0.587, 0.114)


def rgb_to_gray(image: np.ndarray) -> np.ndarray:
    """H×W×3 RGB -> H×W luma as ``cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)``: uint8 rounded as OpenCV's fixed
    point does (bit-identical), floats weighted in float32."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb_to_gray needs an H×W×3 image, got shape {image.shape}")
    if image.dtype == np.uint8:
        r, g, b = (image[..., k].astype(np.int32) * weight for k, weight in enumerate(_GRAY_FIXED))
        return ((r + g + b + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT).astype(np.uint8)
    r, g, b = (image[..., k].astype(np.float32) * np.float32(weight) for k, weight in enumerate(_GRAY_FLOAT))
    return r + g + b
