"""Train or fine-tune U²-Net: compose the Hydra config, build the pieces, run the trainer.

    python train.py                                   # U²-Net† on the built-in synthetic set (CPU, ~5 min)
    python train.py experiment=paper_u2net            # the original recipe on DUTS-TR
    python train.py model=u2net model.weights=u2net.pth data=human_seg   # fine-tune
    python train.py ckpt_path=runs/.../checkpoints/last.pt               # resume

Problems with the user's input (data, weights files) end with a one-line ``error: ...``; set
HYDRA_FULL_ERROR=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch.distributed.elastic.multiprocessing.errors import record

from u2net.engine import NonFiniteLossError, Trainer
from u2net.engine.distributed import cleanup_distributed
from u2net.engine.utils import pick_device, seed_everything
from u2net.models import WeightsDownloadError

# DatasetCheckError is a ValueError
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError, WeightsDownloadError)


def _user_error(exc: BaseException) -> BaseException | None:
    """The user-facing cause of ``exc`` (Hydra wraps errors raised while building objects), if any."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, MissingMandatoryValue):  # a required `???` value, e.g. data.images of data=folder
        return ValueError(f"{exc.full_key} is required: add {exc.full_key}=... to the command line")
    return exc if isinstance(exc, USER_ERRORS) else None


def build_and_fit(cfg: DictConfig) -> tuple[Trainer, dict]:
    """Instantiate model, data, loss, optimizer, schedule and trainer from ``cfg`` and train."""
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
    trainer = Trainer(model, loss_fn, optimizer, schedule, data, instantiate(cfg.trainer), run_config)
    return trainer, trainer.fit(ckpt_path=cfg.ckpt_path)


@record  # under torchrun: a failing rank's traceback goes into the job's error summary
@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> dict:
    try:
        trainer, metrics = build_and_fit(cfg)
    except Exception as exc:
        cause = _user_error(exc)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {cause}")
    cleanup_distributed(trainer.dist)
    if not trainer.dist.is_main:
        return metrics
    shown = {k: metrics[k] for k in ("mae", "max_f", "wfm", "sm", "max_em") if k in metrics}
    print(f"done at step {trainer.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    if trainer.initial_metrics and metrics:
        print(
            f"validation MAE {trainer.initial_metrics['mae']:.4f} at the start -> {metrics['mae']:.4f} now "
            f"(predicting all background: {metrics['mae_all_background']:.4f})"
        )
    summary = trainer.summary()
    if summary:
        print(summary)
    print(f"checkpoints and TensorBoard logs in {trainer.out_dir}")
    return metrics


if __name__ == "__main__":
    main()
