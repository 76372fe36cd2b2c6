"""U²-Net and U²-Net† (Qin et al., "U²-Net: Going Deeper with Nested U-Structure", 2020).

One residual U-block (:class:`RSU`) parametrised by height and dilation, and one :class:`U2Net`
parametrised by a stage table. Attribute names follow the original code (``stage1``,
``rebnconvin``, ``conv_s1``, ``side1``, ``outconv`` ...) so that the official ``.pth`` files load
with strict checking.

The forward pass returns logits; apply ``torch.sigmoid`` for probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REBNCONV", "RSU", "StageSpec", "U2Net", "U2NET_STAGES", "U2NETP_STAGES"]


def upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``src`` (N×C×h×w) to the spatial size of ``target`` (align_corners=False)."""
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3×3 convolution (with dilation), batch norm and ReLU: the original building block."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU-L in the paper).

    ``dilated=False`` gives RSU-7/6/5/4: ``height - 1`` encoder convolutions separated by 2×2
    max-pools (ceil mode, so odd sizes work) and a bottom convolution with dilation 2.
    ``dilated=True`` gives RSU-4F: no pooling, dilations 1, 2, 4, ... instead, so resolution is kept.

    Input N×in_ch×H×W, output N×out_ch×H×W.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False) -> None:
        super().__init__()
        if height < 2:
            raise ValueError(f"RSU height must be at least 2, got {height}")
        self.height = height
        self.dilated = dilated
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        dilations = [2 ** (i - 1) if dilated else 1 for i in range(1, height)]
        bottom_dilation = 2 ** (height - 1) if dilated else 2
        for i, d in enumerate(dilations, start=1):
            self.add_module(f"rebnconv{i}", REBNCONV(out_ch if i == 1 else mid_ch, mid_ch, d))
            if not dilated and i < height - 1:
                self.add_module(f"pool{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.add_module(f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, bottom_dilation))
        for i in range(height - 1, 0, -1):
            self.add_module(f"rebnconv{i}d", REBNCONV(mid_ch * 2, out_ch if i == 1 else mid_ch, dilations[i - 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for i in range(1, self.height):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            if not self.dilated and i < self.height - 1:
                hx = getattr(self, f"pool{i}")(hx)
        hx = getattr(self, f"rebnconv{self.height}")(hx)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            # Static structure (no shape test) so that traced/exported graphs stay valid for any size:
            # below the bottom level, the non-dilated block's features are a pool level coarser.
            if not self.dilated and i < self.height - 1:
                hx = upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
        return hx + hxin


@dataclass(frozen=True)
class StageSpec:
    """One row of a U²-Net stage table: an RSU block's height, channels and dilation flag."""

    height: int
    in_ch: int
    mid_ch: int
    out_ch: int
    dilated: bool = False


# (height, in, mid, out, dilated). Encoder stages 1..6, then decoder stages 5d..1d.
U2NET_STAGES: dict[str, list[tuple]] = {
    "encoder": [
        (7, 3, 32, 64, False),
        (6, 64, 32, 128, False),
        (5, 128, 64, 256, False),
        (4, 256, 128, 512, False),
        (4, 512, 256, 512, True),
        (4, 512, 256, 512, True),
    ],
    "decoder": [
        (4, 1024, 256, 512, True),
        (4, 1024, 128, 256, False),
        (5, 512, 64, 128, False),
        (6, 256, 32, 64, False),
        (7, 128, 16, 64, False),
    ],
}

U2NETP_STAGES: dict[str, list[tuple]] = {
    "encoder": [
        (7, 3, 16, 64, False),
        (6, 64, 16, 64, False),
        (5, 64, 16, 64, False),
        (4, 64, 16, 64, False),
        (4, 64, 16, 64, True),
        (4, 64, 16, 64, True),
    ],
    "decoder": [
        (4, 128, 16, 64, True),
        (4, 128, 16, 64, False),
        (5, 128, 16, 64, False),
        (6, 128, 16, 64, False),
        (7, 128, 16, 64, False),
    ],
}


# Bounds on a stage table and the channel counts, checked before any layer is made: the arguments come from files
# (a checkpoint's ``model_args``, an ONNX file's metadata), and a few bytes asking for 10⁶ channels or an RSU of
# height 10⁶ would otherwise take gigabytes, or minutes of building modules even on the meta device. The published
# tables stay far inside them (at most 1024 channels, height 7, 6 encoder rows).
MAX_CHANNELS = 16384
MAX_HEIGHT = 16
MAX_DEPTH = 16


def _bounded(what: str, value: object, low: int, high: int) -> int:
    """``value`` when it is an int in [low, high]; a ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _as_specs(rows: object, part: str) -> list[StageSpec]:
    is_list = isinstance(rows, Sequence) and not isinstance(rows, (str, bytes))
    if not is_list or len(rows) > MAX_DEPTH:  # too few rows: U2Net says how many it needs
        got = f"{len(rows)} rows" if is_list else f"a {type(rows).__name__}"
        raise ValueError(f"stage table: {part} must be a list of at most {MAX_DEPTH} rows, got {got}")
    specs = []
    for number, row in enumerate(rows, start=1):
        try:
            if isinstance(row, StageSpec):
                spec = row
            elif isinstance(row, Mapping):
                spec = StageSpec(**row)
            else:
                spec = StageSpec(*row)
        except TypeError:
            raise ValueError(
                f"stage table: {part} row {number} is not (height, in_ch, mid_ch, out_ch, dilated): {row!r}"
            ) from None
        where = f"stage table: {part} row {number}"
        _bounded(f"{where} height", spec.height, 2, MAX_HEIGHT)
        for name in ("in_ch", "mid_ch", "out_ch"):
            _bounded(f"{where} {name}", getattr(spec, name), 1, MAX_CHANNELS)
        if not isinstance(spec.dilated, (bool, int)):
            raise ValueError(f"{where} dilated must be true or false, got {spec.dilated!r}")
        specs.append(spec)
    return specs


class U2Net(nn.Module):
    """A nested U-structure of RSU blocks with deep supervision.

    ``stages`` is a table with ``encoder`` (K rows, top to bottom) and ``decoder`` (K - 1 rows,
    bottom to top, i.e. stage ``K-1``d first) lists of ``(height, in_ch, mid_ch, out_ch, dilated)``.
    Encoder stages after the first are preceded by a 2×2 ceil-mode max-pool; each decoder stage takes
    the upsampled stage below concatenated with the encoder skip.

    ``forward(x)`` takes N×in_ch×H×W (any H, W) and returns a tuple of ``K + 1`` logit tensors, each
    N×out_ch×H×W: the fused output first, then side outputs 1..K (side1 is the finest).
    """

    def __init__(self, stages: dict, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        if not isinstance(stages, Mapping) or not {"encoder", "decoder"} <= stages.keys():
            raise ValueError("stage table must be a dict with 'encoder' and 'decoder' rows")
        _bounded("in_ch", in_ch, 1, MAX_CHANNELS)
        _bounded("out_ch", out_ch, 1, MAX_CHANNELS)
        encoder = _as_specs(stages["encoder"], "encoder")
        decoder = _as_specs(stages["decoder"], "decoder")
        depth = len(encoder)
        if depth < 2 or len(decoder) != depth - 1:
            raise ValueError(
                f"stage table needs K >= 2 encoder rows and K - 1 decoder rows, got {depth} and {len(decoder)}"
            )
        if encoder[0].in_ch != in_ch:
            raise ValueError(f"first encoder stage takes {encoder[0].in_ch} channels but in_ch={in_ch}")
        # Catch a wrong row here, by name, rather than as a shape error deep inside the first forward pass.
        for k in range(1, depth):
            if encoder[k].in_ch != encoder[k - 1].out_ch:
                raise ValueError(
                    f"stage table: encoder row {k + 1} takes {encoder[k].in_ch} channels but row {k} gives "
                    f"{encoder[k - 1].out_ch}"
                )
        below = encoder[-1].out_ch
        for row, (i, spec) in enumerate(zip(range(depth - 1, 0, -1), decoder), start=1):
            expected = below + encoder[i - 1].out_ch  # the stage below, upsampled, and encoder stage i's skip
            if spec.in_ch != expected:
                raise ValueError(
                    f"stage table: decoder row {row} (stage {i}d) takes {spec.in_ch} channels but gets "
                    f"{below} from below + {encoder[i - 1].out_ch} from encoder stage {i} = {expected}"
                )
            below = spec.out_ch
        self.depth = depth
        self.stages = {"encoder": [asdict(s) for s in encoder], "decoder": [asdict(s) for s in decoder]}
        self.in_ch = in_ch
        self.out_ch = out_ch

        for i, spec in enumerate(encoder, start=1):
            if i > 1:
                self.add_module(f"pool{i - 1}{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            self.add_module(f"stage{i}", RSU(spec.height, spec.in_ch, spec.mid_ch, spec.out_ch, spec.dilated))
        for i, spec in zip(range(depth - 1, 0, -1), decoder):
            self.add_module(f"stage{i}d", RSU(spec.height, spec.in_ch, spec.mid_ch, spec.out_ch, spec.dilated))
        side_channels = [spec.out_ch for spec in reversed(decoder)] + [encoder[-1].out_ch]
        for i, ch in enumerate(side_channels, start=1):
            self.add_module(f"side{i}", nn.Conv2d(ch, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(depth * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        skips = []
        hx = x
        for i in range(1, self.depth + 1):
            if i > 1:
                hx = getattr(self, f"pool{i - 1}{i}")(hx)
            hx = getattr(self, f"stage{i}")(hx)
            skips.append(hx)
        decoded = [hx]  # stage K's output feeds side K
        for i in range(self.depth - 1, 0, -1):
            skip = skips[i - 1]
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, skip), skip), 1))
            decoded.append(hx)
        decoded.reverse()  # decoded[k] feeds side k+1

        side1 = self.side1(decoded[0])
        sides = [side1]
        for i in range(2, self.depth + 1):
            sides.append(upsample_like(getattr(self, f"side{i}")(decoded[i - 1]), side1))
        fused = self.outconv(torch.cat(sides, 1))
        return (fused, *sides)
