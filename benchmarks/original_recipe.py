"""Baseline for the training-throughput benchmark: the ORIGINAL U-2-Net training recipe.

This re-implements, in our own code, the training pipeline of xuebinqin/U-2-Net
(``u2net_train.py`` + ``data_loader.py``) so that its throughput can be measured next to ours:

* ``SalObjDataset``: ``skimage.io.imread`` of image and mask; a 3-D mask keeps channel 0; a 2-D image
  gets a channel axis (H×W×1); ``imidx = np.array([idx])``.
* ``RescaleT(320)``: ``skimage.transform.resize`` to 320×320 (``mode='constant'``); the mask with
  ``order=0, preserve_range=True``.
* ``RandomCrop(288)``: with probability 0.5 (``random.random() >= 0.5``) flips image and mask with
  ``[::-1]``, i.e. along axis 0 (upside down, as the original does), then crops at
  ``np.random.randint(0, h - 288)``, ``np.random.randint(0, w - 288)``.
* ``ToTensorLab(flag=0)``: image divided by its max, ImageNet mean/std per channel (a grayscale image
  uses channel 0 with the red statistics for all three channels), mask divided by its max when that
  is >= 1e-6, both transposed to C×H×W and returned as float64 tensors.
* ``DataLoader(batch_size=B, shuffle=True, num_workers=1)``; every step converts the batch with
  ``.type(torch.FloatTensor)`` (then moves it to CUDA when available), applies the sigmoid to each of
  the 7 outputs, sums ``BCELoss`` (mean) over them (``muti_bce_loss_fusion``), and runs
  ``zero_grad(); backward(); step()`` with Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
  weight_decay=0) in fp32.

Differences from the original, none of which changes what is computed:

* The network comes from ``u2net.create_model`` (same architecture and state dict), which returns
  logits; ``torch.sigmoid`` is applied to each output here, where the original ``forward`` does it.
* ``nn.BCELoss(size_average=True)`` is spelled ``reduction="mean"`` (same meaning); the ``Variable``
  wrappers (no-ops since PyTorch 0.4) are dropped; ``transforms.Compose`` is a local equivalent so that
  torchvision is not needed.
* The per-iteration ``print`` calls are left out, but the ``.item()`` calls they and the running-loss
  bookkeeping make (7 before ``backward``, 2 after ``step``) are kept, so the synchronisation with the
  GPU is the same.
* No checkpoint saving (the original saves every 2000 iterations, outside any short timed window).
* When the loader runs out, a fresh iterator is started, as the original's next epoch does; that cost
  falls into the timed step in which it happens. The first iterator is created before timing starts.
* With a current scikit-image, ``resize`` anti-aliases when it shrinks an image (``anti_aliasing``
  now defaults to on; scikit-image 0.14, named in the original README, left it off). The call is kept
  exactly as the original writes it, so this is what running the original today costs.

Manual use::

    python benchmarks/original_recipe.py --images DIR --masks DIR --model u2netp --batch-size 8 --steps 3
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from skimage import io, transform
from torch import nn
from torch.utils.data import DataLoader, Dataset

import u2net

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class RescaleT:
    """Resize image and mask to ``output_size``×``output_size`` (the original ignores aspect ratio)."""

    def __init__(self, output_size: int) -> None:
        assert isinstance(output_size, int)
        self.output_size = output_size

    def __call__(self, sample: dict) -> dict:
        size = (self.output_size, self.output_size)
        image = transform.resize(sample["image"], size, mode="constant")
        label = transform.resize(sample["label"], size, mode="constant", order=0, preserve_range=True)
        return {"imidx": sample["imidx"], "image": image, "label": label}


class RandomCrop:
    """Flip along axis 0 with probability 0.5 (as the original does), then crop ``output_size`` at random."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        assert len(output_size) == 2
        self.output_size = tuple(output_size)

    def __call__(self, sample: dict) -> dict:
        image, label = sample["image"], sample["label"]
        if random.random() >= 0.5:
            image = image[::-1]
            label = label[::-1]
        h, w = image.shape[:2]
        new_h, new_w = self.output_size
        top = np.random.randint(0, h - new_h)
        left = np.random.randint(0, w - new_w)
        image = image[top : top + new_h, left : left + new_w]
        label = label[top : top + new_h, left : left + new_w]
        return {"imidx": sample["imidx"], "image": image, "label": label}


class ToTensorLab:
    """``flag=0`` branch of the original: RGB, ImageNet normalisation, C×H×W float64 tensors."""

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, flag: int = 0) -> None:
        if flag != 0:
            raise NotImplementedError("only flag=0 (RGB), the one u2net_train.py uses, is reproduced")
        self.flag = flag

    def __call__(self, sample: dict) -> dict:
        image, label = sample["image"], sample["label"]
        if np.max(label) >= 1e-6:
            label = label / np.max(label)

        image = image / np.max(image)
        out = np.zeros((image.shape[0], image.shape[1], 3))
        if image.shape[2] == 1:
            for c in range(3):
                out[:, :, c] = (image[:, :, 0] - self.MEAN[0]) / self.STD[0]
        else:
            for c in range(3):
                out[:, :, c] = (image[:, :, c] - self.MEAN[c]) / self.STD[c]

        return {
            "imidx": torch.from_numpy(sample["imidx"]),
            "image": torch.from_numpy(out.transpose((2, 0, 1))),
            "label": torch.from_numpy(label.transpose((2, 0, 1))),
        }


class Compose:
    """Apply transforms in order (what ``torchvision.transforms.Compose`` does)."""

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


class SalObjDataset(Dataset):
    """Image/mask pairs read with ``skimage.io.imread``, as in the original ``data_loader.py``."""

    def __init__(
        self,
        img_name_list: Sequence[str],
        lbl_name_list: Sequence[str],
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.image_name_list = list(img_name_list)
        self.label_name_list = list(lbl_name_list)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_name_list)

    def __getitem__(self, idx: int) -> dict:
        image = io.imread(self.image_name_list[idx])
        imidx = np.array([idx])

        has_labels = len(self.label_name_list) > 0
        label_3 = io.imread(self.label_name_list[idx]) if has_labels else np.zeros(image.shape)

        label = np.zeros(label_3.shape[0:2])
        if label_3.ndim == 3:
            label = label_3[:, :, 0]
        elif label_3.ndim == 2:
            label = label_3

        if image.ndim == 3 and label.ndim == 2:
            label = label[:, :, np.newaxis]
        elif image.ndim == 2 and label.ndim == 2:
            image = image[:, :, np.newaxis]
            label = label[:, :, np.newaxis]

        sample = {"imidx": imidx, "image": image, "label": label}
        if self.transform:
            sample = self.transform(sample)
        return sample


def original_transform() -> Compose:
    """The transform chain of ``u2net_train.py``."""
    return Compose([RescaleT(320), RandomCrop(288), ToTensorLab(flag=0)])


def muti_bce_loss_fusion(
    bce_loss: nn.Module, outputs: Sequence[torch.Tensor], labels_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of BCE over the 7 sigmoid maps; returns ``(loss0, loss)`` like the original.

    The original prints each term with ``.item()``; the print is left out, the ``.item()`` calls are kept.
    """
    losses = [bce_loss(d, labels_v) for d in outputs]
    loss = losses[0]
    for extra in losses[1:]:
        loss = loss + extra
    _ = [term.data.item() for term in losses]
    return losses[0], loss


def measure_original_throughput(
    model_name: str,
    image_paths: list[str],
    mask_paths: list[str],
    batch_size: int,
    steps: int,
    warmup: int = 1,
    seed: int = 0,
) -> dict:
    """Run `warmup` + `steps` training steps of the original recipe; time only the `steps` timed ones
    (wall clock from requesting the batch from the loader iterator to optimizer.step() finishing,
    i.e. data loading included).

    Returns {"images_per_s": float, "step_s": float (mean seconds per step),
    "data_wait_s": float (mean seconds waiting for the loader per step)}.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if len(image_paths) == 0 or len(image_paths) != len(mask_paths):
        raise ValueError("need the same, non-zero number of images and masks")

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    dataset = SalObjDataset(img_name_list=image_paths, lbl_name_list=mask_paths, transform=original_transform())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = u2net.create_model(model_name).to(device)
    net.train()
    bce_loss = nn.BCELoss(reduction="mean")
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    iterator = iter(loader)
    running_loss = 0.0
    running_tar_loss = 0.0
    timed_images = 0
    timed_total = 0.0
    timed_wait = 0.0

    for step in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            data = next(iterator)
        except StopIteration:  # next epoch, as the original's outer loop
            iterator = iter(loader)
            data = next(iterator)
        t_data = time.perf_counter()

        inputs, labels = data["image"], data["label"]
        inputs = inputs.type(torch.FloatTensor)
        labels = labels.type(torch.FloatTensor)
        inputs_v, labels_v = inputs.to(device), labels.to(device)

        optimizer.zero_grad()
        outputs = tuple(torch.sigmoid(d) for d in net(inputs_v))
        loss2, loss = muti_bce_loss_fusion(bce_loss, outputs, labels_v)
        loss.backward()
        optimizer.step()

        running_loss += loss.data.item()
        running_tar_loss += loss2.data.item()
        del outputs, loss2, loss
        sync()
        t_end = time.perf_counter()

        if step >= warmup:
            timed_images += inputs.shape[0]
            timed_total += t_end - t0
            timed_wait += t_data - t0

    del iterator  # shuts the worker down
    return {
        "images_per_s": timed_images / timed_total,
        "step_s": timed_total / steps,
        "data_wait_s": timed_wait / steps,
    }


def _list_pairs(images_dir: str, masks_dir: str) -> tuple[list[str], list[str]]:
    """Images in ``images_dir`` and their masks ``<stem>.png`` in ``masks_dir`` (the original's pairing)."""
    image_paths = sorted(
        os.path.join(images_dir, name) for name in os.listdir(images_dir) if name.lower().endswith(IMAGE_EXTS)
    )
    mask_paths = [os.path.join(masks_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in image_paths]
    missing = [p for p in mask_paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} masks missing, e.g. {missing[0]}")
    return image_paths, mask_paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Throughput of the original U-2-Net training recipe.")
    parser.add_argument("--images", required=True, help="folder of training images")
    parser.add_argument("--masks", required=True, help="folder of masks named <image stem>.png")
    parser.add_argument("--model", default="u2netp", choices=["u2net", "u2netp"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    image_paths, mask_paths = _list_pairs(args.images, args.masks)
    result = measure_original_throughput(
        args.model, image_paths, mask_paths, args.batch_size, args.steps, warmup=args.warmup, seed=args.seed
    )
    print(result)


if __name__ == "__main__":
    main()
