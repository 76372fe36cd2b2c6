"""Fine-tuning on one's own images: data=folder, appearance augmentation, weighted (replay) sampling."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from u2net.data import (
    DatasetCheckError,
    ResumableBatchSampler,
    SaliencyDataModule,
    SaliencyDataset,
    SourceSpec,
    folder_datamodule,
    train_transform,
)
from u2net.data.distractors import paste_behind

from .conftest import REPO


def _folders(root, count: int, prefix: str = "p") -> tuple[str, str]:
    """``count`` random 24×20 images with rectangle masks in ``root/images`` and ``root/masks``."""
    rng = np.random.default_rng(count)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"{prefix}{i}.jpg")
        mask = np.zeros((20, 24), np.uint8)
        mask[4 : 8 + i % 10, 3:15] = 255
        Image.fromarray(mask).save(root / "masks" / f"{prefix}{i}.png")
    return str(root / "images"), str(root / "masks")


def _compose(*overrides: str, config: str = "train"):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def _folder_data(images: str, masks: str, *overrides: str) -> SaliencyDataModule:
    args = ["data=folder", f"data.images={images}", f"data.masks={masks}", "data.num_workers=0", "data.progress=false"]
    return instantiate(_compose(*args, *overrides).data, _convert_="all")


def _val_stems(data: SaliencyDataModule) -> list[str]:
    return sorted(image.stem for image, _ in data.pairs()[1])


def test_folder_config_holds_out_by_seed_and_trains(tmp_path) -> None:
    images, masks = _folders(tmp_path / "mine", 20)
    data = _folder_data(images, masks)
    assert (data.val_fraction, data.preprocessing["image_size"], data.train_transform.output_size) == (0.1, 320, 288)
    assert data.train_sources[0].image_dir == tmp_path / "mine" / "images" and not data.test_sources
    data.setup(seed=0)
    assert len(data.train_set) == 18 and len(data.val_set) == 2
    assert not {p[0] for p in data.train_set.pairs} & {p[0] for p in data.val_set.pairs}
    again, other = _folder_data(images, masks), _folder_data(images, masks)
    again.setup(seed=0)
    other.setup(seed=1)
    assert _val_stems(again) == _val_stems(data) and _val_stems(other) != _val_stems(data)
    batch = next(iter(data.train_loader(seed=0)))
    assert batch["image"].shape == (12, 3, 288, 288) and batch["mask"].shape == (12, 1, 288, 288)
    assert next(iter(data.val_loader()))["image"].shape == (2, 3, 320, 320)


def test_folder_with_validation_folders_holds_nothing_out(tmp_path) -> None:
    images, masks = _folders(tmp_path / "mine", 12)
    val_images, val_masks = _folders(tmp_path / "mine_val", 5, prefix="v")
    data = _folder_data(images, masks, f"data.val_images={val_images}", f"data.val_masks={val_masks}")
    data.setup(seed=0)
    assert len(data.train_set) == 12 and _val_stems(data) == [f"v{i}" for i in range(5)]
    assert data.test_sources == data.val_sources  # what evaluate.py scores
    with pytest.raises(ValueError, match="val_images and data.val_masks go together"):
        folder_datamodule(images, masks, val_images=val_images)


def test_folder_needs_its_folders(tmp_path) -> None:
    from evaluate import dataset_pairs
    from u2net.tasks import user_error

    with pytest.raises(MissingMandatoryValue) as info:
        instantiate(_compose("data=folder").data, _convert_="all")
    assert str(user_error(info.value)) == "data.images is required: add data.images=... to the command line"
    data = _folder_data(str(tmp_path / "nowhere"), str(tmp_path / "masks"))
    with pytest.raises(DatasetCheckError) as missing:
        data.setup()
    assert str(missing.value) == f"dataset folder: image folder {tmp_path / 'nowhere'} does not exist"  # one line
    # evaluate.py: the same folders as dataset overrides, else a one-line error
    images, masks = _folders(tmp_path / "mine", 20)
    trained = _folder_data(images, masks)
    trained.setup(seed=_compose().seed)  # the run's seed, which evaluate.py rebuilds the held-out part with
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.data_dir={tmp_path}", "progress=false"])
        with pytest.raises(ValueError, match=r"dataset 'folder' needs data.images: add dataset_overrides=\['data"):
            dataset_pairs("folder", cfg)
        cfg.dataset_overrides = [f"data.images={images}", f"data.masks={masks}"]
        assert dataset_pairs("folder", cfg)[0] == trained.pairs()[1]


def _image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), np.float32)
    mask[10:40, 20:60] = 1
    return image, mask


@pytest.mark.parametrize("option", ["color_jitter", "blur", "noise"])
def test_appearance_changes_the_image_only_and_is_seeded(option: str) -> None:
    image, mask = _image_and_mask()
    plain = train_transform(64, 48, hflip=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated albumentations arguments
        augmented = train_transform(64, 48, hflip=0.5, **{option: 1.0})
    for seed in range(5):
        plain_image, plain_mask = plain(image, mask, seed)
        aug_image, aug_mask = augmented(image, mask, seed)
        assert torch.equal(aug_mask, plain_mask)  # the same geometry, the mask untouched
        assert not torch.allclose(aug_image, plain_image, atol=1e-3)
        again = augmented(image, mask, seed)[0]
        assert torch.equal(again, aug_image)
    assert not torch.equal(augmented(image, mask, 1)[0], augmented(image, mask, 2)[0])
    with pytest.raises(ValueError, match=f"{option} is a probability in"):
        train_transform(64, 48, **{option: 1.5})


def test_appearance_is_off_by_default() -> None:
    cfg = _compose().data
    assert (cfg.color_jitter, cfg.blur, cfg.noise) == (0.0, 0.0, 0.0)
    assert not SaliencyDataModule().train_transform.appearance.transforms


def _draws(sampler: ResumableBatchSampler, batches: int) -> list[int]:
    return [i for batch in itertools.islice(iter(sampler), batches) for i, _ in batch]


def test_weighted_sampling_follows_the_weights_and_resumes_exactly() -> None:
    sources = [(100, 0.8), (900, 0.2)]  # the small set drawn 80 % of the time
    sampler = ResumableBatchSampler(1000, 10, seed=3, sources=sources)
    draws = np.array(_draws(sampler, 400))  # 4 epochs
    assert abs((draws < 100).mean() - 0.8) < 0.03
    assert len(set(draws[draws < 100].tolist())) > 95  # uniform within a source: nearly all seen
    assert len(set(draws[:1000].tolist())) < 1000  # with replacement
    full = list(itertools.islice(iter(ResumableBatchSampler(1000, 10, seed=3, sources=sources)), 250))
    assert [i for batch in full[:100] for i, _ in batch] == draws[:1000].tolist()  # same (seed, step): same draws
    resumed = iter(ResumableBatchSampler(1000, 10, seed=3, start_step=95, sources=sources))
    assert [next(resumed) for _ in range(155)] == full[95:]  # across epoch boundaries
    ranks = [ResumableBatchSampler(1000, 5, seed=3, rank=r, world_size=2, sources=sources) for r in range(2)]
    split = [a + b for a, b in zip(*(itertools.islice(iter(r), 250) for r in ranks))]
    assert split == full  # two ranks see what one process with their combined batch sees
    other = ResumableBatchSampler(1000, 10, seed=4, sources=sources)
    assert _draws(other, 100) != draws[:1000].tolist()


def test_unweighted_order_is_the_permutation_of_seed_and_epoch() -> None:
    sampler = ResumableBatchSampler(50, 5, seed=7)
    for epoch in range(3):
        rng = np.random.default_rng([7, epoch])
        order, seeds = sampler.epoch_order(epoch)
        np.testing.assert_array_equal(order, rng.permutation(50))
        np.testing.assert_array_equal(seeds, rng.integers(0, 2**31 - 1, size=50))
    assert _draws(sampler, 10) == sampler.epoch_order(0)[0].tolist()


def test_weighted_sources_through_the_config_and_to_other_ranks(tmp_path) -> None:
    images, masks = _folders(tmp_path / "mine", 10)
    _folders(tmp_path / "replay", 30, prefix="r")
    replay = f"{{name: replay, root: {tmp_path / 'replay'}, weight: 0.2}}"
    data = _folder_data(images, masks, "data.weight=0.8", f"data.train=[{replay}]", "data.batch_size=4")
    assert [(s.name, s.weight) for s in data.train_sources] == [("folder", 0.8), ("replay", 0.2)]
    data.setup(seed=0)  # holds out 4 of the 40 pairs, from either source
    train, _, sizes = data.pairs()
    assert sizes == [sum(p[0].stem.startswith("p") for p in train), sum(p[0].stem.startswith("r") for p in train)]
    assert train[: sizes[0]] == [p for p in train if p[0].stem.startswith("p")]  # the folder's pairs come first
    draws = np.array(_draws(data.train_loader(seed=0).batch_sampler, 600))
    assert abs((draws < sizes[0]).mean() - 0.8) < 0.03
    rank1 = _folder_data(images, masks, "data.weight=0.8", f"data.train=[{replay}]", "data.batch_size=4")
    rank1.setup_from_pairs(*data.pairs())  # what the trainer hands the other ranks
    assert _draws(rank1.train_loader(seed=0).batch_sampler, 600) == draws.tolist()
    batch = next(iter(rank1.train_loader(seed=0, start_step=3)))
    assert torch.equal(batch["image"], next(iter(data.train_loader(seed=0, start_step=3)))["image"])


def test_weights_are_all_or_none(tmp_path) -> None:
    _folders(tmp_path / "a", 4)
    _folders(tmp_path / "b", 4, prefix="b")
    a, b = (SourceSpec(name, str(tmp_path / name)) for name in "ab")
    with pytest.raises(ValueError, match="give every source a weight or none; b has none"):
        SaliencyDataModule([{**vars(a), "weight": 1.0}, b])
    with pytest.raises(ValueError, match="weights must be 0 or more and not all 0"):
        SaliencyDataModule([{**vars(a), "weight": 0.0}, {**vars(b), "weight": 0.0}])
    data = SaliencyDataModule([a, b], batch_size=2, num_workers=0, progress=False)
    data.setup()
    assert data.source_weights is None and data.pairs()[2] == [4, 4]
    assert data.train_loader(seed=0).batch_sampler.sources is None  # the plain permutation
    # a weighted source that on_invalid=skip empties out cannot be drawn from
    for path in (tmp_path / "b" / "masks").iterdir():
        path.write_bytes(b"not an image")
    skipping = SaliencyDataModule(
        [{**vars(a), "weight": 1.0}, {**vars(b), "weight": 1.0}], on_invalid="skip", progress=False
    )
    with pytest.warns(UserWarning, match="skipping 4 invalid"), pytest.raises(DatasetCheckError, match="dataset b has"):
        skipping.setup()


# -- hard negatives: another training subject pasted behind the sample's (data.distractors) ----------------------


def _subject_photo(seed: int, box: tuple[int, int, int, int], size: tuple[int, int] = (90, 60)) -> tuple:
    """A flat photo of one colour with a subject of another in ``box`` (top, bottom, left, right)."""
    rng = np.random.default_rng(seed)
    image = np.empty((*size, 3), np.uint8)
    image[:] = rng.integers(0, 100, 3)
    mask = np.zeros(size, np.float32)
    top, bottom, left, right = box
    image[top:bottom, left:right] = rng.integers(150, 256, 3)
    mask[top:bottom, left:right] = 1.0
    return image, mask


def test_paste_goes_behind_the_subject_and_keeps_its_pixels() -> None:
    image, mask = _subject_photo(0, (20, 80, 20, 40))
    other, other_mask = _subject_photo(1, (10, 85, 15, 45))
    changed_somewhere = False
    for seed in range(20):
        out = paste_behind(image, mask, other, other_mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[mask == 1], image[mask == 1])  # the subject stays in front
        changed = np.any(out != image, axis=-1)
        # what changed is the other subject's colour (its background never comes along), up to resampled edges
        other_colour = other[50, 30].astype(int)
        if changed.any():
            close = np.abs(out[changed].astype(int) - other_colour).max(axis=-1) <= 2
            assert close.mean() > 0.5
            changed_somewhere = True
    assert changed_somewhere


def test_paste_of_an_empty_subject_changes_nothing() -> None:
    image, mask = _subject_photo(0, (20, 80, 20, 40))
    other, _ = _subject_photo(1, (10, 85, 15, 45))
    out = paste_behind(image, mask, other, np.zeros(other.shape[:2], np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)


def _subject_pairs(tmp_path, count: int = 4) -> list:
    pairs = []
    for i in range(count):
        image, mask = _subject_photo(i, (10 + i, 70, 10 + 3 * i, 40))
        image_path, mask_path = tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
        pairs.append((image_path, mask_path))
    return pairs


def test_dataset_pastes_by_the_sample_seed_and_leaves_the_mask(tmp_path) -> None:
    pairs = _subject_pairs(tmp_path)
    transform = train_transform(64, 48, hflip=0.5)
    plain = SaliencyDataset(pairs, transform, True)
    pasted = SaliencyDataset(pairs, transform, True, distractors=1.0)
    differs = 0
    for seed in range(6):
        base, hard = plain[(1, seed)], pasted[(1, seed)]
        assert torch.equal(hard["mask"], base["mask"])  # same geometry, the target is this sample's own
        assert torch.equal(pasted[(1, seed)]["image"], hard["image"])  # a resumed run sees the same pastes
        differs += not torch.equal(hard["image"], base["image"])
    assert differs >= 4  # a paste can fall out of the crop; most do not
    never = SaliencyDataset(pairs, transform, True, distractors=0.0)
    assert torch.equal(never[(1, 3)]["image"], plain[(1, 3)]["image"])
    with pytest.raises(ValueError, match="distractors is a probability in"):
        SaliencyDataset(pairs, transform, True, distractors=1.5)


def test_distractors_from_the_data_config(tmp_path) -> None:
    assert _compose().data.distractors == 0.0  # off unless a recipe asks
    images, masks = _folders(tmp_path / "mine", 6)
    data = _folder_data(images, masks, "data.distractors=0.5")
    data.setup(seed=0)
    assert data.train_set.distractors == 0.5 and data.val_set.distractors == 0.0  # validation sees photos as they are
