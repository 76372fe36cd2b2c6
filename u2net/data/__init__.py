"""Datasets, preprocessing and loaders."""

from .datamodule import ResumableBatchSampler, SaliencyDataModule, folder_datamodule
from .folder import (
    DatasetCheckError,
    Problem,
    SaliencyDataset,
    SourceSpec,
    check_pairs,
    collect_pairs,
    collect_source_pairs,
    scan_source,
    split_pairs,
)
from .io import IMAGE_EXTENSIONS, list_images, read_image, read_mask
from .transforms import (
    Preprocessing,
    SaliencyTransform,
    appearance_steps,
    eval_transform,
    normalize_image,
    train_transform,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetCheckError",
    "Preprocessing",
    "Problem",
    "ResumableBatchSampler",
    "SaliencyDataModule",
    "SaliencyDataset",
    "SaliencyTransform",
    "SourceSpec",
    "appearance_steps",
    "check_pairs",
    "collect_pairs",
    "collect_source_pairs",
    "ensure_synthetic_dataset",
    "eval_transform",
    "folder_datamodule",
    "generate_synthetic_dataset",
    "list_images",
    "normalize_image",
    "read_image",
    "read_mask",
    "scan_source",
    "split_pairs",
    "train_transform",
]


def __getattr__(name: str):
    # The synthetic set's module is imported on first use, so that ``python -m u2net.data.synthetic``
    # does not find it imported already (runpy warns about that).
    if name in ("ensure_synthetic_dataset", "generate_synthetic_dataset"):
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
