"""Published U²-Net weights: where they live and what input they expect.

Kept apart from the architecture (as in timm): a tag names an architecture plus the data it was
trained on. ``download_weights(tag)`` fetches a file once into the cache folder
(``$U2NET_HOME``, default ``~/.cache/u2net``) and returns its path.

The official ``.pth`` files live on Google Drive, which refuses downloads when a file's daily quota
is spent. Where rembg publishes an ONNX export of the same weights on GitHub, that file (checked
against rembg's MD5) is the fallback; it is imported back into PyTorch like any U²-Net ONNX file.
rembg keeps those files under ``$U2NET_HOME`` too, so a shared ``U2NET_HOME`` is used by both.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything needed to use a published checkpoint, apart from the architecture itself.

    ``normalization="max"`` is the original recipe: divide the image by its own maximum, then
    subtract ``mean`` and divide by ``std`` per channel.
    """

    architecture: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    input_size: int = 320
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    normalization: str = "max"
    description: str = ""
    onnx_mirror: tuple[str, str] | None = None  # (url, md5) of an ONNX export of the same weights
    extra: dict = field(default_factory=dict)


def _rembg_release(file_name: str, md5: str) -> tuple[str, str]:
    return f"https://github.com/danielgatis/rembg/releases/download/v0.0.0/{file_name}", md5


def _gdrive(file_id: str) -> str:
    # The usercontent endpoint with confirm=t serves large files without the virus-scan page.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


PRETRAINED: dict[str, PretrainedCfg] = {
    "u2net.duts": PretrainedCfg(
        "u2net",
        "u2net.pth",
        (_gdrive("1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ"),),
        description="official U²-Net trained on DUTS-TR (173.6 MB)",
        onnx_mirror=_rembg_release("u2net.onnx", "60024c5c889badc19c04ad937298a77b"),
    ),
    "u2netp.duts": PretrainedCfg(
        "u2netp",
        "u2netp.pth",
        (_gdrive("1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy"),),
        description="official U²-Net† (lite) trained on DUTS-TR (4.7 MB)",
        onnx_mirror=_rembg_release("u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
    ),
    "u2net.human_seg": PretrainedCfg(
        "u2net",
        "u2net_human_seg.pth",
        (_gdrive("1m_Kgs91b21gayc2XLW0ou8yugAIadWVP"),),
        description="official U²-Net for human segmentation (Supervisely person data)",
        onnx_mirror=_rembg_release("u2net_human_seg.onnx", "c09ddc2e0104f800e3e1bb4652583d1f"),
    ),
    "u2net.portrait": PretrainedCfg(
        "u2net",
        "u2net_portrait.pth",
        (_gdrive("1IG3HdpcRiDoWNookbncQjeaPN28t90yW"),),
        description="official U²-Net portrait-drawing model (outputs line drawings, not masks)",
    ),
}


def list_pretrained(architecture: str | None = None) -> list[str]:
    """Tags of the published weights, optionally only those for one architecture."""
    return sorted(t for t, cfg in PRETRAINED.items() if architecture is None or cfg.architecture == architecture)


def get_pretrained_cfg(tag: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` for ``tag`` (e.g. ``"u2net.human_seg"``)."""
    try:
        return PRETRAINED[tag]
    except KeyError:
        raise ValueError(f"unknown pretrained tag {tag!r}; available: {', '.join(list_pretrained())}") from None


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$U2NET_HOME`` or ``~/.cache/u2net``."""
    return Path(os.environ.get("U2NET_HOME", Path.home() / ".cache" / "u2net")).expanduser()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``"sha256"``, ``"md5"``, ...), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    return file_digest(path, "sha256")


def download_file(
    url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True, md5: str | None = None
) -> Path:
    """Download ``url`` to ``dest`` through a temporary file, checking ``sha256`` and ``md5`` if given.

    ``dest`` only appears once the download is complete and verified, so an interrupted download
    never leaves a truncated file behind.
    """
    dest = Path(dest)
    with atomic_write(dest) as out, urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr)
        head = b""
        digest, md5_digest = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        while chunk := response.read(1 << 20):
            head = head or chunk[:512]
            digest.update(chunk)
            md5_digest.update(chunk)
            out.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {digest.hexdigest()})")
        if md5 is not None and md5_digest.hexdigest() != md5:
            raise ValueError(f"{url}: checksum mismatch (expected md5 {md5}, got {md5_digest.hexdigest()})")
        if _looks_like_html(head):
            raise ValueError(f"{url}: the server returned a web page instead of a weights file")
    return dest


def _looks_like_html(head: bytes) -> bool:
    head = head.lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


class WeightsDownloadError(RuntimeError):
    """No mirror of a pretrained tag's weights could be downloaded (offline, or every mirror failed)."""


def download_weights(tag: str, directory: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path to the weights for ``tag``, downloading them into the cache first if needed: the
    official file, else the ONNX export of the same weights (see the module docstring)."""
    cfg = get_pretrained_cfg(tag)
    dest = Path(directory) if directory is not None else cache_dir()
    dest = dest / cfg.file_name
    onnx = dest.with_suffix(".onnx") if cfg.onnx_mirror else None
    if dest.exists():
        return dest
    if onnx is not None and onnx.exists():  # ours, or rembg's in a shared $U2NET_HOME: checked, never replaced
        if file_digest(onnx, "md5") != cfg.onnx_mirror[1]:
            raise WeightsDownloadError(f"{onnx}: does not match the MD5 of {tag!r}'s ONNX export; move it away")
        return onnx
    errors = []
    for url in cfg.urls:
        try:
            return download_file(url, dest, cfg.sha256, progress=progress)
        except Exception as exc:  # try the next mirror
            errors.append(f"{url}: {exc}")
    if cfg.onnx_mirror is not None:
        url, md5 = cfg.onnx_mirror
        try:
            return download_file(url, onnx, progress=progress, md5=md5)
        except Exception as exc:
            errors.append(f"{url}: {exc}")
    raise WeightsDownloadError(
        f"could not download {cfg.file_name} for {tag!r} (offline? download it elsewhere and pass the local "
        f"file, or put it in {dest.parent}): " + "; ".join(errors)
    )
