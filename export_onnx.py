"""Export a U²-Net (our checkpoint, an official .pth, a pretrained tag or an ONNX U²-Net) to ONNX, check the
file against PyTorch, and for int8 report what quantisation costs in accuracy and gains in speed.

    python export_onnx.py weights=checkpoints/u2net.pth output=u2net.onnx
    python export_onnx.py weights=u2netp.duts output=u2netp.onnx dynamic_hw=true
    python export_onnx.py weights=runs/.../checkpoints/best.pt output=model_fp16.onnx fp16=true
    python export_onnx.py weights=runs/.../checkpoints/best.pt output=model_int8.onnx int8=static

The file outputs probabilities (fused first, then the six side outputs) like rembg's u2net.onnx: it works with
rembg (``new_session("u2net_custom", model_path=...)``), ONNX-Runtime apps, ``evaluate.py weights=model.onnx``,
and loads back for fine-tuning (``python train.py model.weights=model.onnx``).

Problems with the user's input end with a one-line ``error: ...``; HYDRA_FULL_ERROR=1 shows the traceback.
"""

from __future__ import annotations

from functools import partial

from u2net.errors import script_requires

script_requires("export", "train", torch="PyTorch", hydra="Hydra")  # a light install: one line, no traceback

import hydra
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig

from u2net.evaluation import DatasetConfigs
from u2net.export import export_model
from u2net.tasks import task_wrapper


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> dict:
    # int8's calibration and report images: a configs/data/*.yaml, composed as train.py composes it
    overrides = [f"paths.data_dir={cfg.paths.data_dir}", *cfg.calibration.dataset_overrides]
    datasets = DatasetConfigs(partial(compose, "train"), instantiate, overrides)
    pairs_of = partial(datasets.pairs, check="header", on_invalid="skip", progress=bool(cfg.progress))
    return task_wrapper(export_model)(cfg, pairs_of)


if __name__ == "__main__":
    main()
