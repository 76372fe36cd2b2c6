"""The folder job: remove the background of a file or of every image under a folder, pipelined over threads
around the model, with a report and an optional QA table.

    job = plan_job("photos/", "cutouts/", options)       # checked before the model loads (u2net.inference.planning)
    report = run_job(remover, job)                       # or remove_batch(remover, "photos/", "cutouts/", options)
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.io import ImageReadError, read_problem
from ..fileio import atomic_write
from .batch import DEFAULT_WORKERS, default_batch_size, run_pipeline
from .options import RemovalOptions
from .planning import Job, output_size_problem, plan_job, read_header_size
from .qa import MaskQuality, assess_mask, save_qa_table
from .remover import BackgroundRemover, Decoded

__all__ = ["PIPELINE_BYTES_PER_PIXEL", "BatchReport", "remove_batch", "run_job"]


@dataclass
class BatchReport:
    """What :func:`remove_batch` did: outputs written, skipped (already there), failures, and inputs
    left out of the folder listing (``left_out``: broken links, links to folders; see
    :func:`~u2net.data.io.list_images`), each with its reason. ``qa_csv_error``: why the QA table could not
    be written (one line naming the file), when it could not."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    flagged: int = 0  # outputs with a QA flag (see u2net.inference.qa)
    qa_csv_error: str | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed

    def summary(self, overwrite: str = "overwrite=True") -> str:
        """One line; ``overwrite``: how the caller's user replaces existing outputs (the CLI: ``--overwrite``)."""
        skipped = f"{self.skipped} skipped (output exists; {overwrite} to replace)" if self.skipped else "0 skipped"
        left_out = f"; {len(self.left_out)} link(s)/folder(s) skipped" if self.left_out else ""
        flagged = f"; {self.flagged} flagged by QA" if self.flagged else ""
        return f"{self.total} image(s): {self.done} written, {skipped}, {self.failed} failed{left_out}{flagged}"


# The most memory an image takes per pixel on its way through a job with the default options: the decoded RGB
# array, the full-size float32 map and its temporaries, the alpha and the RGBA output (19 B/px measured on a
# 24 MP JPEG, by peak RSS).
PIPELINE_BYTES_PER_PIXEL = 20


def remove_batch(
    remover: BackgroundRemover,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: RemovalOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    format: str | None = "png",
    quality: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    qa_csv: str | os.PathLike | None = None,
) -> BatchReport:
    """Remove the background of a file or of every image under a folder: :func:`~u2net.inference.planning.plan_job`
    (its :class:`~u2net.inference.planning.JobError`, a ``ValueError``, before any work), then :func:`run_job`.

    ``format``: ``png``, ``webp`` or ``jpeg`` (``None``: see :func:`~u2net.inference.planning.output_format_for`);
    ``quality`` 1–100 for lossy WebP or JPEG (WebP without it is lossless). JPEG has no alpha: it needs
    ``mask_only``, an opaque ``bg_color`` or a ``bg_image``. Existing outputs are skipped unless ``overwrite``.
    With ``qa_csv``, the CSV gets one row per output (see :func:`~u2net.inference.qa.save_qa_table`)."""
    job = plan_job(src, dst, options, format=format, quality=quality, overwrite=overwrite, qa_csv=qa_csv)
    return run_job(remover, job, progress, batch_size=batch_size, workers=workers)


def run_job(
    remover: BackgroundRemover,
    job: Job,
    progress: bool = True,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
) -> BatchReport:
    """Run a planned job: images are decoded and preprocessed by ``workers`` threads (default
    :data:`~u2net.inference.batch.DEFAULT_WORKERS`; 0: one image after another on this thread) ahead of the
    model, which runs on batches of ``batch_size`` (default: 8 on a GPU, 4 otherwise), and finished, encoded and
    written by as many threads behind it.

    Each output is written to a temporary file and renamed, so an interrupted run leaves no half-written file.
    An unreadable or corrupt input (or any other error on one image) is recorded in the report with its reason
    and the job goes on, as are the inputs the plan refused. With the job's QA table, it gets one row per output,
    those skipped as done included, also when the run is interrupted; the report counts the flagged outputs."""
    report = BatchReport(skipped=job.skipped, left_out=job.left_out)
    problems = dict(job.refused)
    bar = _progress_bar(job, report.skipped, progress)

    def on_result(pair: tuple[Path, Path], error: BaseException | None) -> None:
        if error is None:
            report.done += 1
        else:
            problems[pair] = read_problem(error)
            bar.set_postfix(failed=len(problems))
        bar.update()

    qualities: dict[tuple[Path, Path], MaskQuality] | None = None if job.qa_csv is None else {}
    prepare, finish = _cutout_stages(remover, job, qualities)
    try:
        with bar:
            run_pipeline(
                job.todo,
                prepare,
                lambda batch: remover.model_output(batch, job.options),
                finish,
                on_result,
                batch_size=batch_size or default_batch_size(remover.predictor),
                workers=DEFAULT_WORKERS if workers is None else workers,
                cost=functools.partial(_pipeline_bytes, header_size=job.header_size),
            )
    except KeyboardInterrupt:
        if qualities is not None:  # keep what was done: a re-run starts from this table (no slow re-reads now)
            _, error = save_qa_table(job.qa_csv, job.own, qualities, job.options, job.previous_qa, False)
            if error:
                warnings.warn(error, stacklevel=2)
        raise
    # in input order (the listing is sorted)
    report.failures = sorted(job.clashes + [(pair[0], problems[pair]) for pair in job.pairs if pair in problems])
    if qualities is not None:
        report.flagged, report.qa_csv_error = save_qa_table(
            job.qa_csv, job.own, qualities, job.options, job.previous_qa
        )
    return report


def _progress_bar(job: Job, skipped: int, progress: bool):
    """A tqdm bar on stderr over every input of ``job``, those decided already (``skipped``, refused) counted."""
    from tqdm import tqdm

    return tqdm(
        total=len(job.pairs) + len(job.clashes),
        initial=skipped + len(job.refused) + len(job.clashes),
        unit="img",
        desc="remove",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _pipeline_bytes(
    pair: tuple[Path, Path], header_size: Callable[[Path], tuple[int, int] | None] = read_header_size
) -> int:
    """About the most bytes ``pair``'s input holds in a job (run_pipeline's ``cost``), from its header (read by
    ``header_size``); 0 when that is unreadable: decoding then fails the image with the reason."""
    size = header_size(pair[0])
    return size[0] * size[1] * PIPELINE_BYTES_PER_PIXEL if size else 0


def _cutout_stages(remover: BackgroundRemover, job: Job, qualities: dict | None):
    """The ``prepare`` and ``finish`` stages of :func:`~u2net.inference.batch.run_pipeline` for an (input,
    output) pair: the remover's own two halves of a cut-out (:meth:`BackgroundRemover.prepare` and
    :meth:`BackgroundRemover.finish`), then the output written and the mask's assessment put in ``qualities``."""

    def prepare(pair: tuple[Path, Path]) -> tuple[np.ndarray, Decoded]:
        return remover.prepare(pair[0], job.options)

    def finish(pair: tuple[Path, Path], decoded: Decoded, raw: np.ndarray) -> None:
        image, alpha = remover.finish(decoded, raw, job.options)
        problem = output_size_problem(job.output_format.name, image.size)  # a crop's size is known only now
        if problem:  # reported as the planning check's are, without an exception type
            raise ImageReadError(os.fspath(pair[1]), problem)
        with atomic_write(pair[1]) as f:
            job.output_format.save(image, f)
        if qualities is not None:
            qualities[pair] = assess_mask(alpha)  # one key per thread: no lock needed

    return prepare, finish
