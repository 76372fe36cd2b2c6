"""Train or fine-tune U²-Net: compose the Hydra config, build the pieces, run the trainer.

python train.py                                   # U²-Net† on the built-in synthetic set (CPU, ~5 min)
python train.py experiment=paper_u2net            # the original recipe on DUTS-TR
python train.py model=u2net model.weights=u2net.pth data=human_seg   # fine-tune
python train.py ckpt_path=runs/.../checkpoints/last.pt               # resume
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from u2net.data import DatasetCheckError
from u2net.engine import NonFiniteLossError, Trainer


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    run_config = OmegaConf.to_container(cfg, resolve=True)
    model = instantiate(cfg.model)
    data = instantiate(cfg.data, _convert_="all")
    loss_fn = instantiate(cfg.loss, _convert_="all")
    optimizer = instantiate(cfg.optim, _convert_="all")(model.parameters())
    scheduler = instantiate(cfg.sched)(optimizer, total_steps=cfg.trainer.max_steps)
    trainer = Trainer(model, loss_fn, optimizer, scheduler, data, instantiate(cfg.trainer), run_config)
    try:
        metrics = trainer.fit(ckpt_path=cfg.ckpt_path)
    except (DatasetCheckError, NonFiniteLossError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    print(f"done at step {trainer.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if trainer.initial_metrics and metrics:
        print(
            f"validation MAE {trainer.initial_metrics['mae']:.4f} at the start -> {metrics['mae']:.4f} now "
            f"(predicting all background: {metrics['mae_all_background']:.4f})"
        )
    print(f"checkpoints and TensorBoard logs in {trainer.out_dir}")
    return metrics


if __name__ == "__main__":
    main()
