"""The images a dataset config names for scoring: its test sources, else the part training holds out."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data import SaliencyDataModule, collect_pairs
from ..data.labels import MaskReader
from ..tasks import missing_key


@dataclass
class DatasetConfigs:
    """``configs/data/<name>.yaml`` by name, composed the way train.py composes it.

    ``compose(overrides)`` returns the composed train config (Hydra's ``compose("train", ...)``) and
    ``instantiate`` builds its ``data`` node (Hydra's): the entry scripts pass them in, since the package does
    not import Hydra. ``overrides`` apply to every dataset (evaluate.py's ``dataset_overrides``).
    """

    compose: Callable[[list[str]], Any]
    instantiate: Callable[..., Any]
    overrides: Sequence[str] = field(default_factory=list)

    def load(self, name: str) -> tuple[SaliencyDataModule, int]:
        """The dataset's data module and the seed a training run on it splits its pairs with."""
        try:
            cfg = self.compose([f"data={name}", *self.overrides])
        except Exception as exc:
            if type(exc).__name__ != "MissingConfigException":
                raise
            known = [o for o in getattr(exc, "options", None) or [] if not o.startswith("_")]
            raise ValueError(f"unknown dataset {name!r}; available: {', '.join(known)}") from None
        try:
            return self.instantiate(cfg.data, _convert_="all"), int(cfg.trainer.seed)
        except Exception as exc:
            key = missing_key(exc)  # a required `???` value, e.g. data.images of data=folder
            if key is None:
                raise
            raise ValueError(f"dataset {name!r} needs {key}: add dataset_overrides=['{key}=...']") from None

    def pairs(self, name: str, check: str = "header", on_invalid: str = "skip", progress: bool = True) -> list:
        """The (image, mask) pairs to score: the ``test`` sources, else the validation sources, else the pairs
        training holds out with ``val_fraction`` (rebuilt as training builds them: its file check and seed)."""
        return self.scoring_set(name, check, on_invalid, progress)[0]

    def scoring_set(
        self, name: str, check: str = "header", on_invalid: str = "skip", progress: bool = True
    ) -> tuple[list, MaskReader]:
        """:meth:`pairs` and the reader of their masks (label maps where the dataset says ``labels``)."""
        data, seed = self.load(name)
        return self._pairs(data, seed, name, check, on_invalid, progress), data.mask_reader

    @staticmethod
    def _pairs(data: SaliencyDataModule, seed: int, name: str, check: str, on_invalid: str, progress: bool) -> list:
        data.progress = progress
        data.prepare()  # the synthetic set, if configured and missing
        if data.test_sources or data.val_sources:
            sources = data.test_sources or data.val_sources
            return collect_pairs(sources, check=check, on_invalid=on_invalid, progress=progress)
        if not (data.train_sources and data.val_fraction > 0):
            raise ValueError(f"dataset {name!r} names no test or validation images to score")
        # No separate test folders (e.g. human_seg): another seed or other files give another split.
        data.setup(seed=seed)
        held_out = data.pairs()[1]
        print(
            f"{name}: scoring the {len(held_out)} image(s) training holds out (val_fraction {data.val_fraction}, "
            f"seed {seed}); if the model was trained with another seed: dataset_overrides=['seed=N']",
            file=sys.stderr,
        )
        return held_out
