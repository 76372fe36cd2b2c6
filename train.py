"""Train or fine-tune U²-Net: compose the Hydra config, build the pieces, run the trainer.

    python train.py                                   # U²-Net† on the built-in synthetic set (CPU, ~5 min)
    python train.py experiment=paper_u2net            # the original recipe on DUTS-TR
    python train.py model=u2net model.weights=u2net.pth data=human_seg   # fine-tune
    python train.py ckpt_path=runs/.../checkpoints/last.pt               # resume

Problems with the user's input (data, weights files) end with a one-line ``error: ...``; set
HYDRA_FULL_ERROR=1 to see the traceback instead.
"""

from __future__ import annotations

import sys

from u2net.errors import script_requires

script_requires("training", "train", torch="PyTorch", hydra="Hydra")  # a light install: one line, no traceback

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from u2net.device import pick_device
from u2net.engine import Trainer
from u2net.engine.distributed import cleanup_distributed
from u2net.engine.utils import seed_everything
from u2net.tasks import task_wrapper


def build_and_fit(cfg: DictConfig) -> tuple[Trainer, dict]:
    """Instantiate model, data, loss, optimizer, schedule, logger and trainer from ``cfg`` and train."""
    run_config = OmegaConf.to_container(cfg, resolve=True)
    seed_everything(cfg.seed)  # the initial weights depend on it (every rank builds the same model)
    on_cuda = pick_device(cfg.trainer.device).type == "cuda"
    model = instantiate(cfg.model, _convert_="all")
    # GPU fast path: pinned host memory for the loader, fused Adam/AdamW kernels.
    data = instantiate(cfg.data, _convert_="all", **({"pin_memory": True} if on_cuda else {}))
    loss_fn = instantiate(cfg.loss, _convert_="all")
    fused = {"fused": True} if on_cuda and cfg.optim.get("fused", None) is None else {}
    groups = instantiate(cfg.params)(model, lr=cfg.optim.lr)  # per-stage rates, or a frozen encoder
    optimizer = instantiate(cfg.optim, _convert_="all", **fused)(groups)
    schedule = instantiate(cfg.sched)
    logger = instantiate(cfg.logger)  # TensorBoard, or nothing
    config = instantiate(cfg.trainer, **logger.trainer_options())  # checkpoints record the logger's settings
    trainer = Trainer(model, loss_fn, optimizer, schedule, data, config, run_config, logger)
    return trainer, trainer.fit(ckpt_path=cfg.ckpt_path)


def report(trainer: Trainer, metrics: dict) -> None:
    """The end of a run on the console: final scores, start -> now, the summary and where the files are."""
    shown = {k: metrics[k] for k in ("mae", "max_f", "wfm", "sm", "max_em") if k in metrics}
    print(f"done at step {trainer.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    start = trainer.selection.initial_metrics
    if start and metrics:
        print(
            f"validation MAE {start['mae']:.4f} at the start -> {metrics['mae']:.4f} now "
            f"(predicting all background: {metrics['mae_all_background']:.4f})"
        )
    summary = trainer.selection.summary()
    if summary:
        print(summary)
    print(f"checkpoints and TensorBoard logs in {trainer.out_dir}")


@record  # under torchrun: a failing rank's traceback goes into the job's error summary
@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    sys.stdout.reconfigure(line_buffering=True)  # validation lines show as they come, also in a log file
    trainer, metrics = task_wrapper(build_and_fit)(cfg)
    cleanup_distributed(trainer.dist)
    if trainer.dist.is_main:
        report(trainer, metrics)
    return metrics


if __name__ == "__main__":
    main()
