"""Datasets, preprocessing and loaders."""

from ..lazy import lazy_exports

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

# Each name's submodule, imported on first use: torch and albumentations only where they are needed (the
# loaders, datasets and augmentation), so that inference's preprocessing (.preprocessing) and image reading
# (.io) import neither. The synthetic set's module is lazy too, so that ``python -m u2net.data.synthetic``
# does not find it imported already (runpy warns about that).
_SOURCES = {
    "ResumableBatchSampler": "datamodule",
    "SaliencyDataModule": "datamodule",
    "folder_datamodule": "datamodule",
    "DatasetCheckError": "folder",
    "Problem": "folder",
    "SaliencyDataset": "folder",
    "SourceSpec": "folder",
    "check_pairs": "folder",
    "collect_pairs": "folder",
    "collect_source_pairs": "folder",
    "scan_source": "folder",
    "split_pairs": "folder",
    "IMAGE_EXTENSIONS": "io",
    "list_images": "io",
    "read_image": "io",
    "read_mask": "io",
    "Preprocessing": "preprocessing",
    "SaliencyTransform": "transforms",
    "appearance_steps": "transforms",
    "eval_transform": "transforms",
    "normalize_image": "transforms",
    "train_transform": "transforms",
    "ensure_synthetic_dataset": "synthetic",
    "generate_synthetic_dataset": "synthetic",
}
# Submodules that were attributes of the package once it was imported (it used to import them all).
_SUBMODULES = frozenset(_SOURCES.values()) - {"synthetic"}


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, _SUBMODULES, __all__)
