"""The Hydra config tree composes, builds plain objects, and the presets hold the original recipe."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from u2net.data import SaliencyDataModule
from u2net.engine import LRSchedule, TrainerConfig
from u2net.engine.logger import NullLogger, TensorBoardLogger
from u2net.losses import DeepSupervisionLoss

from .conftest import REPO

DATA_CONFIGS = sorted(p.stem for p in (REPO / "configs" / "data").glob("*.yaml") if not p.stem.startswith("_"))
# What a config needs on the command line (data=folder: the user's folders are required).
REQUIRED = {"folder": ["data.images=/datasets/mine/images", "data.masks=/datasets/mine/masks"]}


def _compose(*overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    cfg.hydra.runtime.output_dir = "/tmp/u2net-config-test"  # what Hydra sets when it runs
    HydraConfig.instance().set_config(cfg)  # so that ${hydra:...} resolves as in train.py
    return cfg


def test_every_dataset_named_in_the_issue_has_a_config() -> None:
    expected = {"synthetic", "duts_tr", "duts_te", "hku_is", "ecssd", "dut_omron", "pascal_s", "sod", "human_seg"}
    assert expected | {"duts_tr_hku_is"} <= set(DATA_CONFIGS)


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_data_configs_build_a_datamodule(name: str) -> None:
    cfg = _compose(f"data={name}", "paths.data_dir=/datasets", *REQUIRED.get(name, []))
    data = instantiate(cfg.data, _convert_="all")
    assert isinstance(data, SaliencyDataModule) and data.train_sources
    assert all(s.root.startswith("/datasets/") for s in data.train_sources + data.val_sources + data.test_sources)
    assert data.val_sources or data.val_fraction > 0


def test_combined_training_sets() -> None:
    data = instantiate(_compose("data=duts_tr_hku_is").data, _convert_="all")
    assert [s.name for s in data.train_sources] == ["DUTS-TR", "HKU-IS"]


def test_default_run_builds_every_piece() -> None:
    cfg = _compose()
    cfg.trainer.out_dir  # noqa: B018  (resolves through ${hydra:runtime.output_dir})
    assert cfg.model.name == "u2netp" and cfg.data.synthetic is not None
    model = instantiate(cfg.model)
    instantiate(cfg.optim)(model.parameters())
    schedule = instantiate(cfg.sched)
    assert isinstance(instantiate(cfg.loss, _convert_="all"), DeepSupervisionLoss)
    assert isinstance(instantiate(cfg.trainer), TrainerConfig)
    assert schedule.factor(0, cfg.trainer.max_steps) == 0.0  # warm-up starts from zero
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert resolved["trainer"]["out_dir"] == "/tmp/u2net-config-test"  # what checkpoints store


@pytest.mark.parametrize("experiment,model", [("paper_u2net", "u2net"), ("paper_u2netp", "u2netp")])
def test_paper_presets_hold_the_original_recipe(experiment: str, model: str) -> None:
    cfg = _compose(f"experiment={experiment}")
    assert cfg.model.name == model and cfg.data.train[0].name == "DUTS-TR"
    assert cfg.data.batch_size == 12 and cfg.data.image_size == 320 and cfg.data.crop_size == 288
    assert cfg.loss.kind == "bce" and cfg.loss.weights is None and cfg.sched.name == "constant"
    assert cfg.trainer.precision == "fp32" and cfg.data.normalization == "max"
    optimizer = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and tuple(group["betas"]) == (0.9, 0.999) and group["eps"] == 1e-8
    assert group["weight_decay"] == 0.0


def test_overrides_from_the_issue_compose() -> None:
    cfg = _compose("model=u2net", "data=duts_tr", "data.batch_size=3", "trainer.max_steps=7", "ckpt_path=/x/last.pt")
    assert (cfg.model.name, cfg.data.batch_size, cfg.trainer.max_steps, cfg.ckpt_path) == ("u2net", 3, 7, "/x/last.pt")
    finetune = _compose("experiment=human_seg_finetune")
    assert finetune.model.weights == "u2net.human_seg" and finetune.data.train[0].name == "human-seg"
    custom = instantiate(_compose("model=u2net_custom").model, _convert_="all")
    assert custom.stage1.rebnconv1.conv_s1.out_channels == 32


def test_trainer_config_defaults_are_the_dataclass_defaults() -> None:
    # configs/trainer/default.yaml lists every field (so that each can be overridden) with TrainerConfig's
    # defaults; the interpolations are the run's folder and seed. TensorBoard settings come from logger=.
    cfg = _compose()
    built = asdict(instantiate(cfg.trainer))
    interpolated = {"out_dir": "/tmp/u2net-config-test", "seed": cfg.seed}
    assert built == {**asdict(TrainerConfig()), **interpolated}
    assert set(cfg.trainer) - {"_target_"} == set(asdict(TrainerConfig())) - {"tensorboard", "image_log_count"}


@pytest.mark.parametrize("logger,tensorboard,images", [("tensorboard", True, 4), ("none", False, 0)])
def test_logger_configs_build_what_the_trainer_takes(logger: str, tensorboard: bool, images: int) -> None:
    cfg = _compose(f"logger={logger}")
    built = instantiate(cfg.logger)
    assert type(built) is (TensorBoardLogger if tensorboard else NullLogger) and built.image_log_count == images
    config = instantiate(cfg.trainer, **built.trainer_options())  # as train.py builds it
    assert (config.tensorboard, config.image_log_count) == (tensorboard, images)


def test_paper_u2netp_is_paper_u2net_with_the_lite_model() -> None:
    lite, full = _compose("experiment=paper_u2netp"), _compose("experiment=paper_u2net", "model=u2netp")
    del lite.hydra, full.hydra  # Hydra's record of the command lines, which differ
    assert OmegaConf.to_container(lite) == OmegaConf.to_container(full)


@pytest.mark.parametrize("name,warmup", [("constant", 0), ("cosine", 20), ("poly", 0)])
def test_schedules_share_their_defaults(name: str, warmup: int) -> None:
    schedule = instantiate(_compose(f"sched={name}").sched)
    assert isinstance(schedule, LRSchedule) and (schedule.name, schedule.warmup_steps) == (name, warmup)


def test_entry_configs_share_the_hydra_block() -> None:
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        runs = {name: compose(name, return_hydra_config=True).hydra for name in ("train", "evaluate", "export")}
    assert all(not h.job.chdir for h in runs.values())
    assert runs["train"].run.dir.startswith("runs/") and runs["evaluate"].run.dir.startswith("runs/eval/")
    assert runs["export"].run.dir == "." and runs["export"].output_subdir is None


def test_person_preset_is_finetune_with_the_whole_network_learning() -> None:
    folders = ["data.images=/p/photos", "data.masks=/p/labels", "data.labels=nonzero"]
    person, finetune = _compose("experiment=person", *folders), _compose("experiment=finetune", *folders)
    assert person.model.weights == finetune.model.weights == "u2netp.duts"
    assert (person.params.encoder_lr_scale, person.optim.lr) == (1.0, 1.0e-4)
    assert finetune.params.encoder_lr_scale == 0.0
    assert person.trainer.freeze_bn and person.trainer.restore_bn and person.loss == finetune.loss
    data = instantiate(person.data, _convert_="all")
    assert data.train_sources[0].labels == "nonzero" and data.mask_reader.rules  # label maps are read as masks
