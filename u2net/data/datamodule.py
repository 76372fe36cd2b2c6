"""Training and validation loaders built from plain settings (what a Hydra data config holds)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .folder import (
    DatasetCheckError,
    SaliencyDataset,
    SourceSpec,
    collate,
    collect_pairs,
    collect_source_pairs,
    mask_reader_for,
    split_pairs,
    workers_default,
)
from .labels import LabelsOption
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, eval_transform, train_transform


class ResumableBatchSampler(Sampler):
    """Endless batches of ``(index, augmentation_seed)`` keys, reshuffled every epoch.

    Everything is a function of ``(seed, step)``: epoch ``e`` uses the permutation drawn from
    ``(seed, e)``, and each sample gets its augmentation seed from the same place. Starting at
    ``start_step`` therefore yields exactly what an uninterrupted run would have yielded from there
    on, which is what makes resumed training bit-for-bit identical.

    Weighted (``sources``: the (number of samples, weight) of each source, whose samples are
    consecutive indices in that order): each draw picks a source with probability proportional to its
    weight and a sample uniformly within it, with replacement, so sample ``i`` of source ``s`` has
    probability ``w_s / sum(w) / n_s``; an epoch is still ``num_samples`` draws.

    Distributed: each step covers a global batch of ``batch_size × world_size`` consecutive
    positions of the epoch's order and rank ``r`` takes the ``r``-th slice, so N ranks with
    batch B see exactly the samples (and augmentations) of one process with batch N·B.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sources: Sequence[tuple[int, float]] | None = None,
    ) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"batch size {batch_size} × {world_size} process(es) is larger than the training set "
                f"({num_samples} samples)"
            )
        if sources is not None:
            sizes, weights = (np.asarray(column) for column in zip(*sources))
            if sizes.sum() != num_samples or (sizes[weights > 0] == 0).any() or weights.sum() <= 0:
                raise ValueError(f"(size, weight) of sources {list(sources)} do not describe {num_samples} samples")
            self._sizes, self._offsets = sizes, np.cumsum(sizes) - sizes
            self._probs = weights / weights.sum()
        self.sources = sources
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)  # the last incomplete batch is dropped

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample indices, per-position augmentation seeds) of ``epoch``, each of length ``num_samples``:
        a permutation, or with ``sources`` weighted draws with replacement."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.sources is None:
            order = rng.permutation(self.num_samples)
        else:
            source = rng.choice(len(self._probs), size=self.num_samples, p=self._probs)
            order = self._offsets[source] + rng.integers(0, self._sizes[source])
        return order, rng.integers(0, 2**31 - 1, size=self.num_samples)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, None
        global_batch = self.batch_size * self.world_size
        for step in itertools.count(self.start_step):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.epoch_order(epoch)
            first = (step % self.steps_per_epoch) * global_batch + self.rank * self.batch_size
            indices, seeds = order[0][first : first + self.batch_size], order[1][first : first + self.batch_size]
            yield [(int(i), int(s)) for i, s in zip(indices, seeds)]

    def __len__(self) -> int:  # DataLoader needs a length; the stream itself is endless
        return 2**62


def _as_sources(items: Sequence[Mapping | SourceSpec] | None) -> list[SourceSpec]:
    return [item if isinstance(item, SourceSpec) else SourceSpec(**dict(item)) for item in (items or [])]


def _source_weights(sources: Sequence[SourceSpec]) -> list[float] | None:
    """The training sources' sampling weights, or ``None`` when none has one (uniform sampling)."""
    unweighted = [s.name for s in sources if s.weight is None]
    if len(unweighted) == len(sources):
        return None
    if unweighted:  # a default for the rest would silently decide their share
        raise ValueError(f"data.train: give every source a weight or none; {', '.join(unweighted)} has none")
    weights = [float(s.weight) for s in sources]
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"data.train: source weights must be 0 or more and not all 0, got {weights}")
    return weights


class SaliencyDataModule:
    """Datasets and loaders for training and validation.

    ``train`` and ``val`` are lists of sources (``name``, ``root``, ``images``, ``masks``); several
    training sources are concatenated (e.g. DUTS-TR + HKU-IS), and drawn from in proportion to their
    ``weight`` if they have one (all or none). Without ``val`` sources, ``val_fraction`` of the
    training pairs is held out. ``synthetic`` (generator arguments incl. ``root``) makes the built-in
    synthetic set first if it is missing. ``color_jitter``, ``blur`` and ``noise`` are the
    probabilities of the training images' appearance augmentations (see :class:`SaliencyTransform`);
    ``distractors`` that of another training subject pasted behind the sample's (hard negatives, see
    :class:`SaliencyDataset`).
    """

    def __init__(
        self,
        train: Sequence[Mapping | SourceSpec] | None = None,
        val: Sequence[Mapping | SourceSpec] | None = None,
        test: Sequence[Mapping | SourceSpec] | None = None,
        val_fraction: float = 0.0,
        batch_size: int = 12,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        image_size: int = 320,
        crop_size: int | None = 288,
        val_image_size: int | None = None,
        hflip: float = 0.5,
        vflip: float = 0.0,
        color_jitter: float = 0.0,
        blur: float = 0.0,
        noise: float = 0.0,
        distractors: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "max",
        interpolation: str = "linear",
        check: str = "full",
        on_invalid: str = "error",
        max_val_samples: int | None = None,
        synthetic: Mapping | None = None,
        pin_memory: bool = False,
        progress: bool = True,
    ) -> None:
        self.train_sources = _as_sources(train)
        self.source_weights = _source_weights(self.train_sources)
        self.val_sources = _as_sources(val)
        self.test_sources = _as_sources(test)  # scored by evaluate.py, not used in training
        self.mask_reader = mask_reader_for([*self.train_sources, *self.val_sources, *self.test_sources])
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.check, self.on_invalid = check, on_invalid
        self.max_val_samples = max_val_samples
        self.synthetic = dict(synthetic) if synthetic else None
        self.distractors = distractors
        self.pin_memory = pin_memory
        self.progress = progress
        # What validation feeds the model: stored in checkpoints, so inference and export feed the same.
        self.preprocessing = Preprocessing(val_image_size or image_size, mean, std, normalization, interpolation)
        common = {k: v for k, v in self.preprocessing.items() if k != "image_size"}
        appearance = {"color_jitter": color_jitter, "blur": blur, "noise": noise}
        self.train_transform = train_transform(image_size, crop_size, hflip, vflip, **appearance, **common)
        self.val_transform = eval_transform(**self.preprocessing)
        self.train_set: SaliencyDataset | None = None
        self.train_sizes: list[int] = []  # training pairs per training source, in order
        self.val_set: SaliencyDataset | None = None
        self._val_loader: tuple[tuple[int, int], DataLoader] | None = None  # made once per dataset

    def prepare(self) -> None:
        """Make the synthetic set if it is configured and missing (once per machine)."""
        if self.synthetic:
            from .synthetic import ensure_synthetic_dataset

            options = dict(self.synthetic)
            ensure_synthetic_dataset(Path(options.pop("root")), progress=self.progress, **options)

    def pairs(self) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]], list[int]]:
        """What :meth:`setup` settled on: (training pairs, validation pairs, how many of the training
        pairs come from each training source, in order), for :meth:`setup_from_pairs`."""
        if self.train_set is None:
            raise RuntimeError("call setup() before pairs()")
        return self.train_set.pairs, self.val_set.pairs if self.val_set is not None else [], list(self.train_sizes)

    def setup_from_pairs(
        self, train_pairs: Sequence, val_pairs: Sequence, train_sizes: Sequence[int] | None = None
    ) -> None:
        """Build the datasets from pairs another process settled on (see :meth:`pairs`), without scanning.

        ``train_sizes`` (training pairs per training source) is needed for weighted sampling only."""
        if self.source_weights is not None:
            if train_sizes is None or sum(train_sizes) != len(train_pairs):
                raise ValueError("weighted sampling needs the number of training pairs of each source")
            for source, weight, size in zip(self.train_sources, self.source_weights, train_sizes):
                if weight > 0 and size == 0:
                    raise DatasetCheckError(f"dataset {source.name} has weight {weight} but no training pairs left")
        self.train_set = SaliencyDataset(
            list(train_pairs), self.train_transform, True, self.mask_reader, distractors=self.distractors
        )
        self.train_sizes = list(train_sizes) if train_sizes is not None else []
        self.val_set = (
            SaliencyDataset(list(val_pairs), self.val_transform, False, self.mask_reader) if val_pairs else None
        )
        self._val_loader = None

    def setup(self, seed: int = 0, check: str | None = None) -> None:
        """Make the synthetic set if configured and missing, then scan and check every source
        (``check`` overrides the configured check mode)."""
        self.prepare()
        if not self.train_sources:
            raise ValueError("the data config names no training sources (data.train is empty)")
        kwargs = {"check": check or self.check, "on_invalid": self.on_invalid, "progress": self.progress}
        kwargs["workers"] = workers_default()
        per_source = collect_source_pairs(self.train_sources, **kwargs)
        train_pairs = [pair for pairs in per_source for pair in pairs]
        source_of = np.repeat(np.arange(len(per_source)), [len(pairs) for pairs in per_source])
        if self.val_sources:
            val_pairs = collect_pairs(self.val_sources, **kwargs)
        elif self.val_fraction > 0:
            # Split positions rather than pairs (the same split: it depends on the count and seed only)
            # so that each kept pair still knows its source.
            kept, held = split_pairs(range(len(train_pairs)), self.val_fraction, seed)
            val_pairs = [train_pairs[i] for i in held]
            train_pairs, source_of = [train_pairs[i] for i in kept], source_of[kept]
        else:
            val_pairs = []
        if self.max_val_samples is not None and len(val_pairs) > self.max_val_samples:
            val_pairs = val_pairs[: self.max_val_samples]
        train_sizes = np.bincount(source_of, minlength=len(per_source)).tolist()
        self.setup_from_pairs(train_pairs, val_pairs, train_sizes)

    def train_loader(self, seed: int = 0, start_step: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
        """An endless loader of training batches starting at micro-batch ``start_step`` (this rank's share)."""
        if self.train_set is None:
            raise RuntimeError("call setup() before train_loader()")
        sources = list(zip(self.train_sizes, self.source_weights)) if self.source_weights is not None else None
        sampler = ResumableBatchSampler(
            len(self.train_set), self.batch_size, seed, start_step, rank, world_size, sources=sources
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    def val_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader | None:
        """Validation batches in a fixed order (every ``world_size``-th image from ``rank`` when
        distributed, so that the ranks' metrics add up to the whole set), or ``None`` without one.

        The loader is made once and its workers persist: validating again does not start new ones."""
        if self.val_set is None:
            return None
        key = (rank, world_size)
        if self._val_loader is None or self._val_loader[0] != key:
            dataset = self.val_set
            if world_size > 1:
                dataset = torch.utils.data.Subset(self.val_set, range(rank, len(self.val_set), world_size))
            loader = DataLoader(
                dataset,
                batch_size=self.val_batch_size,
                shuffle=False,
                num_workers=self.num_workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
            self._val_loader = (key, loader)
        return self._val_loader[1]

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Training steps in one pass over the training set."""
        if self.train_set is None:
            raise RuntimeError("call setup() before steps_per_epoch()")
        return len(self.train_set) // (self.batch_size * world_size)


def _folder_source(
    name: str, images: str, masks: str, recursive: bool, weight: float | None, labels: LabelsOption = None
) -> SourceSpec:
    """A source from two folders anywhere: their common parent as ``root``, as the dataset configs write it."""
    image_dir, mask_dir = (Path(folder).expanduser().absolute() for folder in (images, masks))
    root = Path(os.path.commonpath([image_dir, mask_dir]))
    return SourceSpec(
        name, str(root), str(image_dir.relative_to(root)), str(mask_dir.relative_to(root)), recursive, weight, labels
    )


def folder_datamodule(
    images: str,
    masks: str,
    val_images: str | None = None,
    val_masks: str | None = None,
    recursive: bool = False,
    weight: float | None = None,
    labels: LabelsOption = None,
    train: Sequence[Mapping | SourceSpec] | None = None,
    val: Sequence[Mapping | SourceSpec] | None = None,
    test: Sequence[Mapping | SourceSpec] | None = None,
    **kwargs,
) -> SaliencyDataModule:
    """A datamodule on the user's own folders (``configs/data/folder.yaml``): images and masks paired by
    stem, validated on ``val_images``/``val_masks`` if given (also what evaluate.py scores), else on the
    held-out ``val_fraction``. Further ``train``/``val`` sources come after the folders (``weight`` is
    the folder's sampling weight when they have weights); ``labels`` reads both mask folders as label maps
    (``"nonzero"`` or foreground label indices, :mod:`u2net.data.labels`); ``kwargs`` go to
    :class:`SaliencyDataModule`."""
    if (val_images is None) != (val_masks is None):
        raise ValueError("data.val_images and data.val_masks go together: give both or neither")
    train_sources = [_folder_source("folder", images, masks, recursive, weight, labels), *_as_sources(train)]
    val_sources = _as_sources(val)
    if val_images is not None:
        val_sources.insert(0, _folder_source("folder-val", val_images, val_masks, recursive, None, labels))
    return SaliencyDataModule(train_sources, val_sources, test or val_sources, **kwargs)
