"""The service's settings: its limits and resources (:class:`ServeSettings`) and the ``Host`` headers it answers.

No FastAPI here: the ``u2net serve`` command reads its defaults without the ``serve`` extra installed.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from .errors import MB

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def host_pattern(host: str) -> str:
    """``host`` as a ``Host`` header carries it: lower case, an IPv6 address in brackets; also
    ``*`` (any host) or ``*.example.com``. ValueError for anything else, such as a port."""
    text = host.strip().lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare).compressed}]"
        except ValueError:
            raise ValueError(f"allowed host {host!r}: give a host name or an address, without a port") from None
    wildcard_ok = text == "*" or (text.startswith("*.") and "*" not in text[1:])
    if not text or ("*" in text and not wildcard_ok) or "/" in text:
        raise ValueError(f"allowed host {host!r}: a host name, an address, '*' or '*.example.com'")
    return text


def default_allowed_hosts(bind: str) -> list[str]:
    """The ``Host`` headers to accept when listening on ``bind``: that name or address, plus the
    loopback names when it is a loopback one. A wildcard (``0.0.0.0``, ``::``) gives the loopback
    names only: the names remote clients use cannot be known here (list them in ``allowed_hosts``),
    and ``0.0.0.0`` itself is no name a legitimate client sends."""
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        address = None
    if bind.strip() == "" or (address is not None and address.is_unspecified):
        return list(LOOPBACK_HOSTS)
    if bind.strip().lower() == "localhost" or (address is not None and address.is_loopback):
        return list(dict.fromkeys([host_pattern(bind), *LOOPBACK_HOSTS]))
    return [host_pattern(bind)]


@dataclass
class ServeSettings:
    """Limits and resources of the service.

    - ``storage_root``: the folder ``/remove-background/path`` reads from and writes to (``None``:
      that endpoint answers 501).
    - ``max_upload_mb``: largest file accepted, per image (413 beyond).
    - ``max_pixels``: largest width × height accepted, checked on the header before decoding (413).
    - ``max_matting_pixels``: the same with ``alpha_matting``, much lower: matting costs minutes and
      gigabytes per megapixel (413 beyond; the image is not downscaled).
    - ``max_output_mb``: largest PNG produced, per image (413 beyond, nothing sent or written).
    - ``max_batch``: most files in one batch request (400 beyond; 413 beyond ``workers + max_queue``).
    - ``workers``: inference threads; ``max_queue``: images allowed to wait for one (503 beyond).
    - ``request_timeout_s``: longest a request may wait for and run its inference (504 beyond).
    - ``upload_timeout_s``: longest a work request's body may take to arrive once it holds a pool slot
      (408 beyond, and the slot is freed): slow uploads cannot hold the pool.
    - ``cors_origins``: origins allowed to call the API from a browser (``["*"]`` for any).
    - ``allowed_hosts``: ``Host`` headers answered (others: 400), against DNS rebinding; default the
      loopback names (:func:`default_allowed_hosts` gives those for a bind address); ``["*"]`` for any.
    - ``device``: PyTorch device when :func:`create_app` loads the model from a path.
    - ``precision``: what the models loaded from paths or tags compute in (``Predictor.from_path``'s: ``auto``
      runs a tag's bundled int8 file on ONNX Runtime's CPU provider, but not on an x86 CPU without VNNI; ``fp32``
      the float file). ``/model-info`` says which runs.
    - ``warmup``: run one tiny image through the model at start-up (first request not slower).
    """

    storage_root: str | os.PathLike | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_matting_pixels: int = 250_000
    max_output_mb: float = 64.0
    max_batch: int = 10
    workers: int = 2
    max_queue: int = 64
    request_timeout_s: float = 60.0
    upload_timeout_s: float = 30.0
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    device: str = "auto"
    precision: str = "auto"
    warmup: bool = True

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "max_pixels", "max_matting_pixels", "max_output_mb", "max_batch", "workers")
        for name in (*positive, "request_timeout_s", "upload_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts is a list of host names")
        self.allowed_hosts = list(dict.fromkeys(host_pattern(host) for host in self.allowed_hosts))
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: no request could be answered")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_output_bytes(self) -> int:
        return int(self.max_output_mb * MB)

    @property
    def capacity(self) -> int:
        """Images admitted at once: running plus waiting."""
        return self.workers + self.max_queue


__all__ = ["LOOPBACK_HOSTS", "ServeSettings", "default_allowed_hosts", "host_pattern"]
