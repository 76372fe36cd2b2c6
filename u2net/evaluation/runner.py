"""Scoring: a model on image/mask pairs, or saved predictions against ground-truth folders.

Both paths feed the same streaming :class:`~u2net.metrics.SaliencyMetrics` (also used by training
validation), keep per-image scores for the report, and keep the worst images for a gallery. Against
soft ground truth (alpha mattes, :class:`SoftTruth`) they also give the matting errors of
:mod:`u2net.metrics.matting`, over the whole image and over each trimap's unknown band.
A file that cannot be read is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import heapq
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..data.folder import Problem, index_by_stem
from ..data.io import IMAGE_EXTENSIONS, list_images, read_image, read_mask, unit_to_uint8
from ..data.labels import LABEL_MAP_EXTENSIONS, LabelsOption, MaskReader
from ..fileio import write_image
from ..inference.predictor import Predictor
from ..metrics import SaliencyMetrics, probabilities_to_uint8
from ..metrics.matting import MattingMetrics


@dataclass
class DatasetResult:
    """Scores of one dataset: the metric summary, one row per image, the worst cases, and failures."""

    name: str
    summary: dict
    per_image: list[dict] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)  # {"name", "mae", "image", "gt", "pred"}, worst first
    failures: list[str] = field(default_factory=list)


class _WorstImages:
    """The ``k`` images with the highest MAE seen so far (kept small: they feed a gallery)."""

    def __init__(self, k: int) -> None:
        self.k, self.heap, self.counter = k, [], 0

    def offer(self, mae: float, payload_fn) -> None:
        if self.k <= 0:
            return
        self.counter += 1
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, (mae, self.counter, payload_fn()))
        elif mae > self.heap[0][0]:
            heapq.heapreplace(self.heap, (mae, self.counter, payload_fn()))

    def sorted(self) -> list[dict]:
        return [payload for _, _, payload in sorted(self.heap, key=lambda item: -item[0])]


# A [0, 1] float mask as the uint8 image it would be saved as (the name kept for the benchmarks).
mask_to_uint8 = unit_to_uint8


@dataclass
class SoftTruth:
    """The ground truth is alpha mattes: score the matting errors too (SAD, MSE, gradient, connectivity; see
    :mod:`u2net.metrics.matting`), over the whole image and, where ``trimap_dir`` has a trimap of the ground
    truth's stem (0 background, 128 unknown, 255 foreground), over its unknown band."""

    trimap_dir: str | Path | None = None

    def __post_init__(self) -> None:
        self.trimaps: dict[str, Path] = {}
        if self.trimap_dir is not None:
            if not Path(self.trimap_dir).is_dir():
                raise FileNotFoundError(f"{self.trimap_dir}: trimap folder does not exist")
            self.trimaps = index_by_stem(list_images(self.trimap_dir, recursive=True), self.trimap_dir, [])

    def trimap(self, gt_path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        """The trimap of ``gt_path`` (H×W uint8), ``None`` without one; ValueError if unreadable or of another size."""
        path = self.trimaps.get(Path(gt_path).stem)
        if path is None:
            return None
        try:
            trimap = mask_to_uint8(read_mask(path))
        except Exception as exc:
            raise ValueError(f"{path}: unreadable trimap ({type(exc).__name__}: {exc})") from None
        if trimap.shape != shape:
            raise ValueError(f"{path}: trimap size {trimap.shape[::-1]} differs from its ground truth {shape[::-1]}")
        return trimap


class _Scores:
    """The accumulators of one dataset: the salient-object metrics, the matting errors against soft ground truth
    (with ``soft``) and the worst images."""

    def __init__(self, worst_count: int, soft: SoftTruth | None) -> None:
        self.metrics = SaliencyMetrics()
        self.matting = MattingMetrics() if soft is not None else None
        self.worst = _WorstImages(worst_count)


class _ScoringSet(Dataset):
    """Images preprocessed for the model, with their ground truth at full size; failures are returned, not raised."""

    def __init__(
        self, pairs: Sequence[tuple[Path, Path]], predictor: Predictor, read_gt: Callable, soft: SoftTruth | None
    ) -> None:
        self.pairs, self.predictor, self.read_gt, self.soft = list(pairs), predictor, read_gt, soft

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, gt_path = self.pairs[index]
        try:
            image = read_image(image_path)
        except Exception as exc:
            return {"error": f"{image_path}: unreadable image ({type(exc).__name__}: {exc})"}
        try:
            gt = mask_to_uint8(self.read_gt(gt_path))
        except Exception as exc:
            return {"error": f"{gt_path}: unreadable mask ({type(exc).__name__}: {exc})"}
        if gt.shape != image.shape[:2]:
            return {"error": f"{gt_path}: mask size {gt.shape[::-1]} differs from its image {image.shape[1::-1]}"}
        try:
            trimap = self.soft.trimap(gt_path, gt.shape) if self.soft is not None else None
        except ValueError as exc:
            return {"error": str(exc)}
        return {"input": self.predictor.preprocess(image), "gt": gt, "trimap": trimap, "index": index}


def _collate(items: list[dict]) -> list[dict]:
    return items


def score_model(
    predictor: Predictor,
    pairs: Sequence[tuple[Path, Path]],
    name: str,
    batch_size: int = 8,
    num_workers: int = 2,
    save_dir: str | Path | None = None,
    worst_count: int = 12,
    progress: bool = True,
    read_gt: Callable[[Path], np.ndarray] = read_mask,
    soft: SoftTruth | None = None,
) -> DatasetResult:
    """Predict every pair's image, resize the prediction to the image's own size, and score it.

    Images are named by their path below the images' common folder, without suffix (``0001``, or
    ``sub/0001`` for nested or several sources). With ``save_dir``, each prediction is written there
    as ``<name>.png`` (8-bit, atomically). A model output that is not finite fails that image only.
    ``read_gt`` reads the ground truth (a :class:`~u2net.data.labels.MaskReader` for label maps); with
    ``soft`` it is alpha mattes, and the matting errors are scored too.
    """
    from tqdm import tqdm

    scores = _Scores(worst_count, soft)
    result = DatasetResult(name, {})
    names = image_names([image for image, _ in pairs])
    dataset = _ScoringSet(pairs, predictor, read_gt, soft)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    with tqdm(total=len(pairs), desc=f"scoring {name}", unit="img", disable=not progress) as bar:
        for items in loader:
            good = [item for item in items if "error" not in item]
            result.failures.extend(item["error"] for item in items if "error" in item)
            if good:
                batch = np.stack([item["input"] for item in good])
                probs = predictor.predict_batch(batch, [item["gt"].shape for item in good])
                for item, prob in zip(good, probs):
                    image_path, gt_path = pairs[item["index"]]
                    if not np.isfinite(prob).all():
                        result.failures.append(f"{image_path}: the model's output is not finite (NaN or inf)")
                        continue
                    pred = probabilities_to_uint8(prob)
                    name_ = names[item["index"]]
                    if save_dir is not None:
                        write_image(Path(save_dir) / f"{name_}.png", pred)
                    _record(result, scores, name_, image_path, pred, item["gt"], item["trimap"])
            bar.update(len(items))
    return _finish(result, scores)


def image_names(paths: Sequence[str | Path]) -> list[str]:
    """Unique names for ``paths``: each path below their common folder, without suffix (posix)."""
    if not paths:
        return []
    common = Path(os.path.commonpath([Path(p).absolute().parent for p in paths]))
    names = [Path(p).absolute().relative_to(common).with_suffix("").as_posix() for p in paths]
    seen: dict[str, str | Path] = {}
    for name, path in zip(names, paths):
        if name in seen:  # a.jpg and a.png in one folder: their predictions would share a file name
            raise ValueError(f"{path}: same name as {seen[name]}; rename one of them")
        seen[name] = path
    return names


def _record(
    result, accumulators: _Scores, name: str, image_path, pred: np.ndarray, gt: np.ndarray, trimap=None
) -> None:
    scores = accumulators.metrics.update(pred, gt)
    if accumulators.matting is not None:
        scores.update(accumulators.matting.update(pred, gt, trimap))
    result.per_image.append({"dataset": result.name, "name": name, "image": str(image_path or ""), **scores})

    def payload() -> dict:
        image = None
        if image_path is not None:
            try:
                image = read_image(image_path)
            except Exception as exc:  # the gallery then shows the prediction without its input
                result.failures.append(f"{image_path}: unreadable image ({type(exc).__name__}: {exc})")
        return {"name": name, "mae": scores["mae"], "image": image, "gt": gt, "pred": pred}

    accumulators.worst.offer(scores["mae"], payload)


def _finish(result: DatasetResult, scores: _Scores) -> DatasetResult:
    if scores.metrics.n_images == 0:
        raise ValueError(f"{result.name}: no image could be scored ({len(result.failures)} failed)")
    result.summary = scores.metrics.results()
    if scores.matting is not None:
        result.summary.update(scores.matting.results())
    result.worst = scores.worst.sorted()
    return result


def pair_predictions(
    pred_dir: str | Path,
    gt_dir: str | Path,
    keep_missing: bool = False,
    gt_extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> tuple[list[tuple[Path | None, Path]], list[str]]:
    """Pair prediction and ground-truth files by stem; returns (pairs, messages about unpaired files).
    With ``keep_missing``, ground truth without a prediction is paired with ``None``."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {what} folder does not exist")
    problems: list[Problem] = []
    # Recursive: predictions saved for datasets of several folders are nested (see score_model).
    preds = index_by_stem(list_images(pred_dir, recursive=True), pred_dir, problems)
    gts = index_by_stem(list_images(gt_dir, recursive=True, extensions=gt_extensions), gt_dir, problems)
    pairs = [(preds.get(stem), gts[stem]) for stem in sorted(gts) if stem in preds or keep_missing]
    messages = [str(problem) for problem in problems]
    unpaired = [stem for stem in sorted(gts) if stem not in preds]
    scored = " (scored as an empty prediction)" if keep_missing else ""
    messages += [f"{gts[stem]}: no prediction with this stem in {pred_dir}{scored}" for stem in unpaired]
    extra = sorted(set(preds) - set(gts))
    if extra:
        messages.append(f"{pred_dir}: {len(extra)} prediction(s) without ground truth ignored (e.g. {extra[0]})")
    if len(unpaired) == len(gts):
        raise ValueError(f"no prediction in {pred_dir} has a ground truth with the same stem in {gt_dir}")
    return pairs, messages


def score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    name: str = "pred_dir",
    image_dir: str | Path | None = None,
    worst_count: int = 12,
    progress: bool = True,
    missing_as_empty: bool = False,
    gt_labels: LabelsOption = None,
    soft: SoftTruth | None = None,
) -> DatasetResult:
    """Score saved predictions (any tool's: grayscale masks, or RGBA cut-outs by their alpha) against
    ground truth. A prediction of another size is resized to the ground truth's, with a warning.

    Missing or unreadable predictions are reported and left out, or with ``missing_as_empty`` scored
    as empty masks, so that a tool which fails on hard images is not flattered by skipping them.
    ``gt_labels`` reads the ground truth as label maps (``"nonzero"`` or foreground indices); with ``soft``
    it is alpha mattes, and the matting errors are scored too."""
    from tqdm import tqdm

    read_gt = MaskReader({gt_dir: gt_labels})
    gt_extensions = LABEL_MAP_EXTENSIONS if gt_labels is not None else IMAGE_EXTENSIONS
    pairs, messages = pair_predictions(pred_dir, gt_dir, missing_as_empty, gt_extensions)
    scores = _Scores(worst_count, soft)
    result = DatasetResult(name, {}, failures=messages)
    images = index_by_stem(list_images(image_dir), image_dir, []) if image_dir else {}
    resized = 0
    for pred_path, gt_path in tqdm(pairs, desc=f"scoring {name}", unit="img", disable=not progress):
        try:
            gt = mask_to_uint8(read_gt(gt_path))
        except Exception as exc:
            result.failures.append(f"{gt_path}: unreadable ground truth ({type(exc).__name__}: {exc})")
            continue
        try:
            trimap = soft.trimap(gt_path, gt.shape) if soft is not None else None
        except ValueError as exc:
            result.failures.append(str(exc))
            continue
        try:
            pred = read_mask(pred_path) if pred_path is not None else np.zeros(gt.shape, np.float32)
        except Exception as exc:
            scored = " (scored as an empty prediction)" if missing_as_empty else ""
            result.failures.append(f"{pred_path}: unreadable prediction ({type(exc).__name__}: {exc}){scored}")
            if not missing_as_empty:
                continue
            pred = np.zeros(gt.shape, np.float32)
        if pred.shape != gt.shape:
            resized += 1
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        _record(result, scores, gt_path.stem, images.get(gt_path.stem), mask_to_uint8(pred), gt, trimap)
    if resized:
        message = f"{name}: {resized} prediction(s) had another size than their ground truth and were resized"
        warnings.warn(message, stacklevel=2)
    return _finish(result, scores)
