"""The ``u2net serve`` image (docker/Dockerfile), for real: built, started, its ``/health`` and HEALTHCHECK answered,
a photo cut out through ``POST /remove-background``, then stopped and removed; and ``u2net remove`` in it with no
network at all. Skips where docker (a running daemon, and a client that builds with BuildKit) is missing.

Nothing is pulled from an image registry: the base is ``U2NET_DOCKER_BASE`` if set, else the Dockerfile's default
(``python:3.11-slim``) if it is here, else ``u2net-base:bookworm`` (the Debian image ``.ci/docker-setup`` makes where
no registry is reachable). pip in the build reaches the package index with this machine's index settings and CA
bundle; where it cannot, the test skips. The image is kept (tag ``u2net-serve:test``): a rerun reuses its layers.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from .conftest import REPO
from .helpers_install import _UNREACHABLE, PHOTO, _assert_cutout

pytestmark = [pytest.mark.container, pytest.mark.subprocess]

TAG = "u2net-serve:test"
BASES = ("python:3.11-slim", "u2net-base:bookworm")
FIRST_CUTOUT_S = 30  # from `docker run` to the first cut-out (4.4 s measured, docs/deploy.md): a hung start fails here

_run = partial(subprocess.run, capture_output=True, text=True, timeout=120)


def _docker_build() -> tuple[list[str], dict[str, str]]:
    """``docker build`` with BuildKit (the Dockerfile mounts a cache and a secret) and its environment: Docker >= 23
    builds with it through the buildx plugin; Docker 20.10's client (Debian's docker.io) has it built in, behind
    DOCKER_BUILDKIT=1 (a newer client without buildx falls back to the legacy builder)."""
    if _run(["docker", "buildx", "version"]).returncode == 0:
        return ["docker", "build"], {}
    for client in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        version = _run([client, "version", "--format", "{{.Client.Version}}"]).stdout.strip()
        if version[:2].isdigit() and int(version.split(".")[0]) < 23:
            return [client, "build"], {"DOCKER_BUILDKIT": "1"}
    pytest.skip("docker cannot build with BuildKit here: install the buildx plugin (docker-buildx-plugin)")


def _base_image() -> str:
    """The base image to build on, among those already here (tests pull nothing)."""
    wanted = os.environ.get("U2NET_DOCKER_BASE")
    for name in [wanted] if wanted else BASES:
        if _run(["docker", "image", "inspect", name]).returncode == 0:
            return name
    pytest.skip(f"no base image here ({wanted or ' or '.join(BASES)}): docker pull one, or run .ci/docker-setup")


def _pip_settings() -> dict[str, str]:
    """pip's index settings here (environment, then configuration files), for pip in the build: those that name
    an index over the network (a file:// index is not in the image), and its CA bundle."""
    done = _run([sys.executable, "-m", "pip", "config", "list"])
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():  # "global.index-url='https://...'", lowest precedence first
        key, _, value = line.partition("=")
        if value[:1] in "'\"":
            found[key.rpartition(".")[2]] = ast.literal_eval(value)
    for key in ("index-url", "extra-index-url", "trusted-host", "cert"):
        variable = "PIP_" + key.upper().replace("-", "_")
        if os.environ.get(variable):
            found[key] = os.environ[variable]
    settings = {}
    for key in ("index-url", "extra-index-url"):
        urls = [url for url in found.get(key, "").split() if url.startswith(("http://", "https://"))]
        if urls:
            settings["PIP_" + key.upper().replace("-", "_")] = " ".join(urls)
    if found.get("trusted-host"):
        settings["PIP_TRUSTED_HOST"] = found["trusted-host"]
    cert = found.get("cert") or os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cert and Path(cert).is_file():
        settings["cert"] = cert
    return settings


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built from this checkout (kept afterwards: its layers make the next build quick)."""
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (.ci/docker-setup installs it on Debian)")
    if _run(["docker", "info"]).returncode != 0:
        pytest.skip("no docker daemon is running (dockerd; see .ci/docker-setup)")
    build, build_env = _docker_build()
    settings = _pip_settings()
    cert = settings.pop("cert", None)
    command = [*build, "--network", "host", "--progress", "plain", "-f", str(REPO / "docker" / "Dockerfile")]
    command += ["-t", TAG, "--build-arg", f"BASE_IMAGE={_base_image()}"]
    command += [arg for key, value in settings.items() for arg in ("--build-arg", f"{key}={value}")]
    command += ["--secret", f"id=pip_cert,src={cert}"] if cert else []
    before = _run(["docker", "image", "inspect", "--format", "{{.Id}}", TAG]).stdout.strip()
    started = time.perf_counter()
    done = _run([*command, str(REPO)], env={**os.environ, **build_env}, timeout=1800)
    output = done.stdout + done.stderr
    if done.returncode:
        unreachable = [line for line in output.splitlines() if any(word in line for word in _UNREACHABLE)]
        if unreachable:
            pytest.skip(f"pip in the build could not reach a package index: {unreachable[-1].strip()[:300]}")
        pytest.fail(f"docker build failed:\n{output[-5000:]}")
    if before and before != _run(["docker", "image", "inspect", "--format", "{{.Id}}", TAG]).stdout.strip():
        _run(["docker", "image", "rm", before])  # the previous build, now untagged (kept if a container uses it)
    size = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", TAG]).stdout)
    print(f"image {TAG}: built in {time.perf_counter() - started:.1f} s, {size / 1e6:.0f} MB")
    return TAG


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _multipart(field: str, path: Path, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
    body = (
        f"{head}Content-Type: {content_type}\r\n\r\n".encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def server(image) -> Iterator[tuple[str, str, float]]:
    """A container of the image serving on a free port of this machine (host network), HEALTHCHECK every second:
    (its id, its URL, when it was started); removed afterwards."""
    port = _free_port()
    started = time.perf_counter()
    run = ["docker", "run", "-d", "--network", "host", "-e", f"U2NET_PORT={port}", "--health-interval", "1s", image]
    container = _run(run, check=True).stdout.strip()
    try:
        yield container, f"http://127.0.0.1:{port}", started
    finally:
        _run(["docker", "rm", "--force", "--volumes", container])


def _logs(container: str) -> str:
    done = _run(["docker", "logs", "--tail", "40", container])
    return (done.stdout + done.stderr)[-3000:]


def test_served_cutout_from_a_fresh_container(server, tmp_path) -> None:
    container, url, started = server
    deadline = started + FIRST_CUTOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                health = answer.read()
            break
        except (urllib.error.URLError, ConnectionError):
            state = _run(["docker", "inspect", "--format", "{{.State.Status}}", container]).stdout.strip()
            assert state == "running" and time.perf_counter() < deadline, f"no /health ({state}):\n{_logs(container)}"
            time.sleep(0.1)
    assert json.loads(health)["status"] == "ok"
    body, content_type = _multipart("file", PHOTO, "image/jpeg")
    request = urllib.request.Request(f"{url}/remove-background", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=FIRST_CUTOUT_S) as answer:
        assert answer.headers["Content-Type"] == "image/png"
        png = answer.read()
    first_cutout = time.perf_counter() - started
    print(f"first cut-out {first_cutout:.1f} s after docker run")
    assert first_cutout < FIRST_CUTOUT_S
    (tmp_path / "cutout.png").write_bytes(png)
    _assert_cutout(tmp_path / "cutout.png")

    # the image's own HEALTHCHECK (python3 and urllib, as the image's user) reports the service healthy
    for _ in range(100):
        status = _run(["docker", "inspect", "--format", "{{.State.Health.Status}}", container]).stdout.strip()
        if status == "healthy":
            break
        time.sleep(0.2)
    assert status == "healthy", _logs(container)
    # the web page (package data of the wheel, as the weights are)
    with urllib.request.urlopen(f"{url}/", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/html")
    # not root, and no PyTorch in the image
    facts = "import importlib.util, os; print(os.getuid(), importlib.util.find_spec('torch') is None)"
    assert _run(["docker", "exec", container, "python3", "-c", facts]).stdout.split() == ["10001", "True"]


def test_removal_in_the_image_needs_no_network(image, tmp_path) -> None:
    # the bundled weights, no network at all: stdin to stdout
    command = ["docker", "run", "--rm", "-i", "--network", "none", "--entrypoint", "u2net", image, "remove", "-", "-"]
    done = subprocess.run(command, input=PHOTO.read_bytes(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    (tmp_path / "cutout.png").write_bytes(done.stdout)
    _assert_cutout(tmp_path / "cutout.png")
