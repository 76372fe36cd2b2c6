"""What the install and container tests share: the photo they cut out, its check, and pip's words for an index
it cannot reach (those tests then skip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import REPO

PHOTO = REPO / "tests" / "data" / "coffee.jpg"  # 240×160: a cup on a saucer, on a table
# pip's words for an index it could not reach: connection, name lookup, proxy, TLS, time-out (the tests then skip).
_UNREACHABLE = (
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
    "SSLError",
)


def _assert_cutout(path: Path) -> None:
    """An RGBA cut-out of the coffee photo: the table's corners transparent, the cup opaque."""
    with Image.open(path) as out:
        assert (out.format, out.mode, out.size) == ("PNG", "RGBA", (240, 160))
        alpha = np.asarray(out)[..., 3]
    assert max(alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]) < 8
    assert alpha[80, 120] > 247
    assert 0.3 < (alpha > 127).mean() < 0.8
