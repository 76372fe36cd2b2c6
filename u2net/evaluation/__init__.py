"""Evaluation: score models or saved predictions and write paper-style reports."""

from .api import evaluate_models, score_weights, write_reports
from .datasets import DatasetConfigs
from .report import (
    REPORT_KEYS,
    console_table,
    markdown_table,
    write_gallery,
    write_per_image,
    write_plots,
    write_tables,
)
from .runner import DatasetResult, pair_predictions, score_folders, score_model

__all__ = [
    "REPORT_KEYS",
    "DatasetConfigs",
    "DatasetResult",
    "console_table",
    "evaluate_models",
    "markdown_table",
    "pair_predictions",
    "score_folders",
    "score_model",
    "score_weights",
    "write_gallery",
    "write_per_image",
    "write_plots",
    "write_reports",
    "write_tables",
]
