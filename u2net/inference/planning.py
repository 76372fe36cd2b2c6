"""Planning a removal job before any model runs: each input's output, the format and what it can hold, the
QA table, and everything about the job that can be refused up front (:func:`plan_job`).

Front ends call :func:`plan_job` first (the CLI before the model loads) and then run the job
(:func:`~u2net.inference.folder.run_job`); its :class:`JobError` says what is wrong and which of the job's
parameters (``field``) to change, so that each front end names its own flag or field.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import list_images, open_image
from ..fileio import folder_write_problem
from .batch import OUTPUT_FORMATS, OutputFormat, format_of_suffix
from .options import RemovalOptions
from .qa import QARow, read_qa_csv

__all__ = [
    "MAX_OUTPUT_SIDE",
    "Job",
    "JobError",
    "check_format",
    "check_source",
    "check_qa_table",
    "needs_alpha",
    "output_format_for",
    "output_size_problem",
    "plan_job",
    "plan_outputs",
]

Pair = tuple[Path, Path]  # (input, output)


class JobError(ValueError):
    """A job refused before any work: ``str()`` says what is wrong, in the library's terms; ``field`` is the
    parameter of :func:`plan_job` to change (``paths``, ``output``, ``format``, ``quality``, ``qa_csv``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Job:
    """A checked removal job (:func:`plan_job`): all that running it needs but the model."""

    options: RemovalOptions
    output_format: OutputFormat
    pairs: list[Pair]  # every input with its output, in input order
    own: list[Pair]  # those whose output is no other input of the run
    todo: list[Pair]  # those to make now (not there yet, or overwrite)
    refused: dict[Pair, str]  # refused before the model runs, with the reason
    clashes: list[tuple[Path, str]]  # inputs without an output: their output name is ambiguous
    left_out: list[tuple[Path, str]]  # links not followed (see list_images)
    qa_csv: Path | None = None
    previous_qa: list[QARow] | None = None  # the rows of the table at qa_csv, kept for the outputs skipped
    header_size: Callable[[Path], tuple[int, int] | None] = field(default=None, repr=False)

    @property
    def skipped(self) -> int:
        """Outputs there already, left as they are: the inputs' own outputs neither made now nor refused."""
        todo = set(self.todo)
        return sum(pair not in todo and pair not in self.refused for pair in self.own)


JPEG_WITHOUT_ALPHA = "JPEG has no transparency: it needs an opaque background colour, a background image or masks only"


def plan_job(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: RemovalOptions | None = None,
    *,
    format: str | None = "png",
    quality: int | None = None,
    overwrite: bool = False,
    qa_csv: str | os.PathLike | None = None,
) -> Job:
    """Check a job and plan its outputs (see :func:`plan_outputs`; ``format`` ``None``: see
    :func:`output_format_for`); :class:`JobError` for a job that cannot run as given. Images larger than the
    format holds (from their headers) and inputs whose output would be another input are refused one by one
    (``Job.refused``): the rest of the job runs."""
    options = options or RemovalOptions()
    output_format = check_format(output_format_for(src, dst, format), quality, options)
    previous = None if qa_csv is None else check_qa_table(Path(qa_csv))
    left_out: list[tuple[Path, str]] = []
    clashes: list[tuple[Path, str]] = []
    try:
        pairs = plan_outputs(src, dst, left_out, output_format.name, clashes)
    except (ValueError, FileNotFoundError) as exc:
        raise JobError("paths", str(exc)) from None
    refused = _inputs_overwritten(pairs)
    own = [pair for pair in pairs if pair not in refused]
    todo = [pair for pair in own if overwrite or not pair[1].exists()]
    if todo:
        problem = folder_write_problem(Path(dst) if Path(src).is_dir() else todo[0][1].parent)
        if problem:
            raise JobError("output", problem)
    header_size = functools.cache(read_header_size)  # each header read once: the format's limits, then the cost
    if output_format.name in MAX_OUTPUT_SIDE and not options.crop:  # a crop's size is known only after the model
        for pair in todo:
            size = header_size(pair[0])
            problem = size and output_size_problem(output_format.name, size)
            if problem:
                refused[pair] = problem
    return Job(
        options,
        output_format,
        pairs,
        own,
        todo=[pair for pair in todo if pair not in refused],
        refused=refused,
        clashes=clashes,
        left_out=left_out,
        qa_csv=None if qa_csv is None else Path(qa_csv),
        previous_qa=previous,
        header_size=header_size,
    )


def check_source(src: str | os.PathLike) -> None:
    """``FileNotFoundError`` for a missing input, ``ValueError`` for one that is no file or folder (a pipe, socket
    or device: listed as a folder it would hold "no images", read as an image it would block)."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if not src.is_file() and not src.is_dir():
        raise ValueError(
            f"{src}: not a file or folder (a pipe, socket or device); to read a stream, give - and redirect it"
        )


def check_format(name: str, quality: int | None, options: RemovalOptions) -> OutputFormat:
    """The output format ``name`` at ``quality``, if it can hold the outputs of ``options``; else :class:`JobError`."""
    try:
        output_format = OutputFormat(name, quality)
    except ValueError as exc:
        raise JobError("quality", str(exc)) from None
    if not output_format.has_alpha and needs_alpha(options):
        raise JobError("format", JPEG_WITHOUT_ALPHA)
    return output_format


def check_qa_table(path: str | os.PathLike) -> list[QARow]:
    """The QA table at ``path`` to keep and extend; :class:`JobError` where it is not one, or cannot be written."""
    path = Path(path)
    try:
        rows = read_qa_csv(path)  # a table of an earlier run is kept; anything else is the user's
    except ValueError as exc:
        raise JobError("qa_csv", str(exc)) from None
    problem = folder_write_problem(path.parent)
    if problem:
        raise JobError("qa_csv", problem)
    return rows


# The largest side each lossy-capable format holds (libwebp's and libjpeg's limits); PNG's is 2³¹ - 1.
MAX_OUTPUT_SIDE = {"webp": 16383, "jpeg": 65500}


def output_size_problem(format: str, size: tuple[int, int]) -> str | None:
    """Why an output of ``size`` = (width, height) px cannot be written as ``format``, or ``None``."""
    limit = MAX_OUTPUT_SIDE.get(format)
    if limit is None or max(size) <= limit:
        return None
    return f"{size[0]}×{size[1]} px: {OUTPUT_FORMATS[format][1]} holds at most {limit} px a side; write png instead"


def output_format_for(src: str | os.PathLike, dst: str | os.PathLike, format: str | None = None) -> str:
    """The output format's name: ``format`` when given; else, for one input file written to a file named
    ``.png``, ``.webp``, ``.jpg`` or ``.jpeg``, the one its suffix names; else ``png``."""
    if format is not None:
        return format
    src, dst = Path(src), Path(dst)
    named = format_of_suffix(dst.suffix) if not src.is_dir() and not dst.is_dir() else None
    return named or "png"


def needs_alpha(options: RemovalOptions) -> bool:
    """Whether the outputs of ``options`` can be transparent (so a format without alpha, JPEG, cannot hold
    them): not for a mask, nor on a background image or an opaque background colour."""
    if options.mask_only or options.bg_image is not None:
        return False
    return options.bg_color is None or (len(options.bg_color) == 4 and options.bg_color[3] < 255)


def plan_outputs(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    skipped: list[tuple[Path, str]] | None = None,
    format: str = "png",
    refused: list[tuple[Path, str]] | None = None,
) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder, outputs named for ``format`` (see
    :data:`~u2net.inference.batch.OUTPUT_FORMATS`: ``.png``, ``.webp``, ``.jpg``).

    A folder is searched recursively for images (by extension, see ``IMAGE_EXTENSIONS``) and the
    output tree mirrors it: ``src/a/b.jpg`` -> ``dst/a/b.png``. Two inputs of one folder with the same
    stem (``b.jpg``, ``b.png``) keep their full names (``b.jpg.png``, ``b.png.png``). A ``dst`` inside
    ``src`` is not searched. For a file, ``dst`` is the output file if its suffix is the format's
    (``.jpeg`` too for JPEG), else a folder that gets ``<stem>.<suffix>``. Links to folders and broken
    links are not followed; with a ``skipped`` list they are appended to it with the reason. A pipe,
    socket or device is refused (``ValueError``): it is no folder of images.

    Some names cannot be given stably: ``b.jpg.png`` (output ``b.jpg.png``) beside ``b.jpg`` and ``b.png``
    (whose clash gives ``b.jpg`` the output ``b.jpg.png`` too), or names differing only in case. Which input
    an existing output belongs to would then depend on the other files present, and a re-run could skip an
    input as done on another's output. With a ``refused`` list such inputs get no output and are appended to
    it with the reason; without one they get numbered names (``b.jpg.png.png``, ``b.jpg.2.png``).
    """
    src, dst, suffix = Path(src), Path(dst), OutputFormat(format).suffix
    check_source(src)
    if src.is_file():
        if format_of_suffix(dst.suffix) == format and not dst.is_dir():
            out = dst
        elif dst.suffix == "" or dst.is_dir():
            out = dst / f"{src.stem}{suffix}"
        else:
            raise ValueError(
                f"{dst}: outputs are {OUTPUT_FORMATS[format][1]} files; name the output '{suffix}' or give a folder"
            )
        if out.resolve() == src.resolve():
            raise ValueError(f"{out}: the output would overwrite the input")
        return [(src, out)]
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output folder must differ from the input folder")
    inside = dst.resolve().is_relative_to(src.resolve())
    listed = list_images(src, recursive=True, skipped=skipped)
    files = [p for p in listed if not (inside and p.resolve().is_relative_to(dst.resolve()))]
    clashes: dict[Path, str] | None = None if refused is None else {}
    names = _output_names([path.relative_to(src) for path in files], suffix, clashes)
    if refused is not None:
        refused.extend((src / rel, why) for rel, why in clashes.items())
    return [(path, dst / names[path.relative_to(src)]) for path in files if path.relative_to(src) in names]


def _output_names(rels: list[Path], suffix: str = ".png", refused: dict[Path, str] | None = None) -> dict[Path, Path]:
    """Each input's output name: ``a/b.jpg`` -> ``a/b.png`` (for ``suffix`` ``.png``); inputs whose stems
    clash (``b.jpg`` and ``b.png``, or names differing only in case) keep their full names (``b.jpg.png``).

    A name depends only on the input's own path and whether another input shares its stem, never on a
    chain of renames. An input whose name is one another input could have (its short or full name,
    compared without case) is ambiguous: which of the two an existing output belongs to would depend on
    the other files present. With ``refused``, such inputs are put there with the reason and get no name;
    without it, they get that name where still free, else their full name or a numbered one."""

    def key(name: Path) -> str:
        return name.as_posix().lower()

    short = {rel: rel.parent / f"{rel.stem}{suffix}" for rel in rels}
    full = {rel: rel.parent / f"{rel.name}{suffix}" for rel in rels}
    stems: dict[str, int] = {}
    claims: dict[str, list[Path]] = {}  # a name -> the inputs that could be written to it
    for rel in rels:
        stems[key(short[rel])] = stems.get(key(short[rel]), 0) + 1
        for name in {key(short[rel]), key(full[rel])}:
            claims.setdefault(name, []).append(rel)
    names: dict[Path, Path] = {}
    ambiguous: list[tuple[Path, Path]] = []
    for rel in rels:
        name = full[rel] if stems[key(short[rel])] > 1 else short[rel]
        rivals = [other for other in claims[key(name)] if other != rel]
        if not rivals:
            names[rel] = name
            continue
        ambiguous.append((rel, name))
        if refused is not None:
            refused[rel] = (
                f"ambiguous output name: {rel.name} and {rivals[0].name} may both be written to {name.name}; "
                "rename one of them"
            )
    if refused is None:
        taken = {key(name) for name in names.values()}
        for rel, name in ambiguous:
            candidates = [name, full[rel]] + [rel.parent / f"{rel.name}.{n}{suffix}" for n in range(2, len(rels) + 3)]
            names[rel] = next(c for c in candidates if key(c) not in taken)
            taken.add(key(names[rel]))
    return names


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return None


def _inputs_overwritten(pairs: list[tuple[Path, Path]]) -> dict[tuple[Path, Path], str]:
    """The pairs whose output is an input of the same run (an output folder that holds the input folder, a
    linked sub-folder, a hard link), with the reason: writing them would destroy that input."""
    by_path: dict[Path, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for source, _ in pairs:
        by_path.setdefault(_resolved(source), source)
        with contextlib.suppress(OSError):
            info = source.stat()
            by_inode.setdefault((info.st_dev, info.st_ino), source)
    problems = {}
    for pair in pairs:
        target = _resolved(pair[1])
        victim = by_path.get(target) if target is not None else None
        if victim is None:
            with contextlib.suppress(OSError):  # the same file under another name (a case-insensitive disk)
                info = pair[1].stat()
                victim = by_inode.get((info.st_dev, info.st_ino))
        if victim is not None:
            problems[pair] = f"its output {pair[1]} is the input {victim} of this run: not written"
    return problems


def read_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header; ``None`` when unreadable (the run then reports why)."""
    try:
        with open_image(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any decoder error is the pipeline's to report, with its reason
        return None
