"""Score a model (checkpoint, official .pth or .onnx) on dataset configs, or saved predictions against
ground truth, with the field's metrics; write tables, per-image scores, curves and a gallery.

    python evaluate.py weights=runs/.../checkpoints/best.pt datasets=[duts_te,ecssd,hku_is]
    python evaluate.py pred_dir=rembg_masks gt_dir=data/DUTS-TE/DUTS-TE-Mask

Problems with the user's input end with a one-line ``error: ...``; HYDRA_FULL_ERROR=1 shows the traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from u2net.errors import script_requires

script_requires("evaluation", "train", torch="PyTorch", hydra="Hydra")  # a light install: one line, no traceback

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from u2net.evaluation import DatasetConfigs, evaluate_models
from u2net.tasks import task_wrapper


def dataset_pairs(name: str, cfg: DictConfig) -> tuple[list, Callable]:
    """The pairs of ``configs/data/<name>.yaml`` to score, composed as train.py composes it (with
    ``cfg.dataset_overrides``): its ``test`` sources, else its validation sources, else training's held-out part;
    and the reader of their masks (label maps where the dataset sets ``labels``)."""
    overrides = [f"paths.data_dir={cfg.paths.data_dir}", *cfg.dataset_overrides]
    datasets = DatasetConfigs(partial(compose, "train"), instantiate, overrides)
    return datasets.scoring_set(name, check=cfg.check, on_invalid=cfg.on_invalid, progress=cfg.progress)


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    return task_wrapper(evaluate_models)(cfg, out_dir, partial(dataset_pairs, cfg=cfg))


if __name__ == "__main__":
    main()
