"""Evaluation: score models or saved predictions and write paper-style reports."""

from .report import (
    RESULT_KEYS,
    console_table,
    markdown_table,
    write_gallery,
    write_per_image,
    write_plots,
    write_tables,
)
from .runner import DatasetResult, pair_predictions, score_folders, score_model

__all__ = [
    "RESULT_KEYS",
    "DatasetResult",
    "console_table",
    "markdown_table",
    "pair_predictions",
    "score_folders",
    "score_model",
    "write_gallery",
    "write_per_image",
    "write_plots",
    "write_tables",
]
