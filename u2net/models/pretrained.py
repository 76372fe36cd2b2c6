"""Published U²-Net weights: where they live and what input they expect.

Kept apart from the architecture (as in timm): a tag names an architecture plus the data it was
trained on. ``download_weights(tag)`` fetches a file once into the cache folder
(``$U2NET_HOME``, default ``~/.cache/u2net``) and returns its path.

``u2netp.duts`` (:data:`DEFAULT_MODEL`) and ``u2netp.person`` (the same architecture fine-tuned on photos of
people by ``experiment=person``) ship inside the package (``u2net/models/bundled/``, see the ``NOTICE`` there):
their tags resolve to those files, MD5-checked, without any network access.

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

from ..data.preprocessing import Preprocessing
from ..fileio import atomic_write

DEFAULT_MODEL = "u2netp.duts"  # what `u2net remove` and `u2net serve` use without --model: bundled, works offline
BUNDLED_DIR = Path(__file__).with_name("bundled")  # weights shipped as package data


@dataclass(frozen=True)
class BundledFile:
    """A weights file shipped in :data:`BUNDLED_DIR`, with the digests it was shipped with."""

    name: str
    md5: str
    sha256: str


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything needed to use a published checkpoint, apart from the architecture itself.

    ``preprocessing`` is what the weights expect (inference and export read it for the tag); the default is
    the original recipe: 320², divide the image by its own maximum, then ImageNet mean and std per channel.
    """

    architecture: str
    file_name: str
    urls: tuple[str, ...]
    sha256: str | None = None  # pins of the file at ``urls``: each one given is checked after download
    md5: str | None = None
    preprocessing: Preprocessing = Preprocessing()
    description: str = ""
    onnx_mirror: tuple[str, str] | None = None  # (url, md5) of an ONNX export of the same weights
    onnx_mirror_sha256: str | None = None  # that export's SHA-256, where known
    bundled: BundledFile | None = None  # shipped with the package: used instead of any download
    # its static int8 export, shipped too (``export_onnx.py weights=<tag> int8=static``): the CPU default
    bundled_int8: BundledFile | None = None
    extra: dict = field(default_factory=dict)

    # Read-only views of ``preprocessing``, for code written when these were fields of their own.
    @property
    def input_size(self) -> int:
        return self.preprocessing.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    @property
    def normalization(self) -> str:
        return self.preprocessing.normalization


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
        description="official U²-Net† (lite) trained on DUTS-TR (4.7 MB; bundled as rembg's ONNX export)",
        onnx_mirror=_rembg_release("u2netp.onnx", "8e83ca70e441ab06c318d82300c84806"),
        # The mirror's file is the bundled one (same MD5), so its SHA-256 is known too.
        onnx_mirror_sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        bundled=BundledFile(
            "u2netp.onnx",
            md5="8e83ca70e441ab06c318d82300c84806",
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        ),
        bundled_int8=BundledFile(
            "u2netp_int8.onnx",
            md5="a2583f1fdd583b05bdf607dd864ef7e4",
            sha256="2c3153fb2db092b910722255a34f1979a594363f0092d90cd8b6e26cdd505b6f",
        ),
    ),
    "u2netp.person": PretrainedCfg(
        "u2netp",
        "u2netp_person.onnx",
        (),  # ships with the package only
        description="U²-Net† fine-tuned on photos of people by experiment=person (4.7 MB, bundled; "
        "docs/models/u2netp.person.md)",
        bundled=BundledFile(
            "u2netp_person.onnx",
            md5="185d4fcfb11379180a4ca708afa8ff8b",
            sha256="f12c430f6f9baa17c6c9641370d91e0ae18f36dbbc615921fc27237089e601d3",
        ),
        bundled_int8=BundledFile(
            "u2netp_person_int8.onnx",
            md5="6f31bfda09d839c9b1e65f5f51e7dd37",
            sha256="074bf7ba4a29944478fbc89489e743492c987a1e09d1af9dab99a56440bd7c68",
        ),
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


def bundled_tags() -> list[str]:
    """The tags whose weights ship with the package (no download), default first."""
    return sorted((tag for tag, cfg in PRETRAINED.items() if cfg.bundled), key=lambda tag: tag != DEFAULT_MODEL)


def list_pretrained(architecture: str | None = None) -> list[str]:
    """Tags of the published weights, optionally only those for one architecture."""
    return sorted(t for t, cfg in PRETRAINED.items() if architecture is None or cfg.architecture == architecture)


def pretrained_tag(path_or_tag: str | os.PathLike) -> str | None:
    """The pretrained tag ``path_or_tag`` names, or ``None`` where it names a file: the one rule every loader and
    backend follows. A ``str`` spelled exactly as a tag is that tag, even where a file of that name exists in the
    current folder; ``./u2netp.duts`` (or a ``Path``, which cannot keep the ``./``) names the file."""
    return path_or_tag if isinstance(path_or_tag, str) and path_or_tag in PRETRAINED else None


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


# (path, size, mtime) of bundled files whose MD5 matched: the check costs ~10 ms, and a server or test session
# loads them many times.
_VERIFIED_BUNDLES: set[tuple[str, int, int]] = set()


def bundled_weights_path(tag: str, int8: bool = False) -> Path | None:
    """The weights file shipped with the package for ``tag`` (its int8 export with ``int8``), MD5-checked once per
    process; ``None`` when the tag ships none. A missing or damaged file (a broken installation) is a one-line
    error naming it."""
    cfg = get_pretrained_cfg(tag)
    bundled = cfg.bundled_int8 if int8 else cfg.bundled
    if bundled is None:
        return None
    path = BUNDLED_DIR / bundled.name
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: the bundled weights of {tag!r} are missing from the installed package; reinstall the package"
        ) from None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED_BUNDLES:
        md5 = file_digest(path, "md5")
        if md5 != bundled.md5:
            raise ValueError(
                f"{path}: the bundled weights of {tag!r} are damaged (md5 {md5}, expected {bundled.md5}); "
                "reinstall the package"
            )
        _VERIFIED_BUNDLES.add(key)
    return path


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
            raise WeightsMismatchError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {digest.hexdigest()})")
        if md5 is not None and md5_digest.hexdigest() != md5:
            raise WeightsMismatchError(f"{url}: checksum mismatch (expected md5 {md5}, got {md5_digest.hexdigest()})")
        if looks_like_html(head):
            raise ValueError(f"{url}: the server returned a web page instead of a weights file")
    return dest


def looks_like_html(head: bytes) -> bool:
    """Whether a file's first bytes are a web page (a failed download saved as weights)."""
    head = head.lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


class WeightsDownloadError(RuntimeError):
    """No mirror of a pretrained tag's weights could be downloaded (offline, or every mirror failed)."""


class WeightsMismatchError(ValueError):
    """A downloaded or cached weights file does not match the digest pinned for it: corrupt, or another file.
    Not a :class:`WeightsDownloadError`: the network worked, and retrying offline advice would mislead."""


def _cached_path(cfg: PretrainedCfg, directory: str | os.PathLike | None) -> Path:
    return (Path(directory) if directory is not None else cache_dir()) / cfg.file_name


def local_weights(tag: str, directory: str | os.PathLike | None = None, verify: bool = True) -> Path | None:
    """The weights for ``tag`` already on this machine, never downloading: the bundled file (see
    :func:`bundled_weights_path`), else the official file or its ONNX export in ``directory`` (default:
    the cache folder), else ``None``. ``verify=False`` skips the cached file's digests (for a caller that only
    asks which file it is; loading it verifies it)."""
    bundled = bundled_weights_path(tag)
    if bundled is not None:  # before the cache: the same file everywhere, whatever a cache holds
        return bundled
    cfg = get_pretrained_cfg(tag)
    dest = _cached_path(cfg, directory)
    if dest.exists():  # written only after its download matched every pin; checked again where pins exist
        if verify:
            _check_cached(dest, tag, "official file", cfg.md5, cfg.sha256)
        return dest
    onnx = dest.with_suffix(".onnx")
    if cfg.onnx_mirror is not None and onnx.exists():  # ours, or rembg's in a shared $U2NET_HOME: checked, kept
        if verify:
            _check_cached(onnx, tag, "ONNX export", cfg.onnx_mirror[1], cfg.onnx_mirror_sha256)
        return onnx
    return None


def _check_cached(path: Path, tag: str, what: str, md5: str | None, sha256: str | None) -> None:
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is not None and (actual := file_digest(path, algorithm)) != expected:
            raise WeightsMismatchError(
                f"{path}: does not match the {algorithm.upper()} of {tag!r}'s {what}: corrupt, or another file "
                f"({algorithm} {actual}, expected {expected}); move it away to download it again"
            )


def download_weights(tag: str, directory: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path to the weights for ``tag``: the bundled file where the tag has one (no network access), else
    the cached file, downloading it into ``directory`` (default: the cache folder) first if needed: the
    official file, else the ONNX export of the same weights (see the module docstring)."""
    local = local_weights(tag, directory)
    if local is not None:
        return local
    cfg = get_pretrained_cfg(tag)
    dest = _cached_path(cfg, directory)
    onnx = dest.with_suffix(".onnx")
    errors, mismatched = [], False
    for url in cfg.urls:
        try:
            return download_file(url, dest, cfg.sha256, progress=progress, md5=cfg.md5)
        except Exception as exc:  # try the next mirror
            errors.append(str(exc) if isinstance(exc, WeightsMismatchError) else f"{url}: {exc}")  # names the url
            mismatched |= isinstance(exc, WeightsMismatchError)
    if cfg.onnx_mirror is not None:
        url, md5 = cfg.onnx_mirror
        try:
            return download_file(url, onnx, cfg.onnx_mirror_sha256, progress=progress, md5=md5)
        except Exception as exc:
            errors.append(str(exc) if isinstance(exc, WeightsMismatchError) else f"{url}: {exc}")  # names the url
            mismatched |= isinstance(exc, WeightsMismatchError)
    if mismatched:  # a server answered with other bytes than the pinned ones: not a network problem
        raise WeightsMismatchError(
            f"could not get {cfg.file_name} for {tag!r}: what was downloaded is corrupt or not the published "
            "file (its digest does not match the pin; nothing was kept): " + "; ".join(errors)
        )
    raise WeightsDownloadError(
        f"could not download {cfg.file_name} for {tag!r} (offline? download it elsewhere and pass the local "
        f"file, or put it in {dest.parent}): " + "; ".join(errors)
    )
