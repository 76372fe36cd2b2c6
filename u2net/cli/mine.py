"""``u2net mine``: rank unlabelled photos by how unsure the model is; write the top ones with its masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..inference.mining import RANKINGS
from . import common
from .common import Command, UsageError, int_in, say, shown


def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("photos", type=Path, help="folder of unlabelled photos")
    parser.add_argument(
        "output",
        type=Path,
        help="folder to write images/, masks/ (the model's masks, to correct) and ranking.csv; nothing in it is "
        "overwritten",
    )
    parser.add_argument("--top", type=int_in(1), default=50, metavar="N", help="how many photos to write (50)")
    parser.add_argument(
        "--by",
        choices=RANKINGS,
        default="combined",
        help="what ranks the photos: combined (default: band + flip + 0.25 for several regions), band (the share "
        "of unsure pixels), flip (disagreement with the mirror image), entropy, or random (the baseline)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the draw of --by random (0)")
    parser.add_argument("--recursive", action="store_true", help="also rank photos in subfolders")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..inference.mining import mine_folder

    if not args.photos.is_dir():
        raise UsageError(f"{shown(args.photos)}: not a folder of photos")
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"{shown(args.output)}: exists and is not a folder")
    remover = common.load_remover(args)
    try:
        rows = mine_folder(
            remover.predictor,
            args.photos,
            args.output,
            args.top,
            by=args.by,
            seed=args.seed,
            recursive=args.recursive,
            progress=not args.quiet,
            say=lambda line: say(shown(line), sys.stderr),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise UsageError(shown(exc)) from None
    chosen = [row for row in rows if row["image"]]
    say(
        f"ranked {len(rows)} photo(s) by {args.by}; wrote the {len(chosen)} least sure to {shown(args.output)} "
        f"(images/, masks/, ranking.csv). Correct the masks, then: python train.py experiment=person "
        f"data.images={shown(args.output / 'images')} data.masks={shown(args.output / 'masks')}"
    )
    return 0


COMMAND = Command(
    "mine",
    "rank unlabelled photos by how unsure the model is, and write the top ones with its masks to correct",
    add_arguments,
    run,
    description="Run the model on every photo of a folder (as it is and mirrored), rank the photos by how unsure "
    "it is, and write the top N with the model's masks as editable 8-bit PNGs plus ranking.csv: correct the "
    "masks and train on the folder pair (docs/models/u2netp.person.md has the measured gain over random picks).",
)
