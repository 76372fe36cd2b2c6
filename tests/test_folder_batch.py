"""Folder mode: the pipelined, batched runner (same outputs as one image at a time, failures isolated,
bounded queues, Ctrl-C), output formats, stdin/stdout and the remove command's speed options."""

from __future__ import annotations

import io
import sys
import threading
import types

import numpy as np
import pytest
from PIL import Image

from u2net.cli import main
from u2net.inference import BackgroundRemover, RemovalOptions, remove_batch, run_pipeline
from u2net.inference.batch import CPU_BATCH_SIZE, OutputFormat, default_batch_size
from u2net.inference.planning import plan_outputs

from .conftest import FullSizePredictor


class RecordingPredictor(FullSizePredictor):
    """The red channel as the map; records the size of every batch and fails on request: on any batch
    holding an image whose top-left pixel is ``poison`` (red), or with ``interrupt_after`` batches done."""

    def __init__(self, poison: int | None = None, interrupt_after: int | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.poison, self.interrupt_after = poison, interrupt_after
        self.lock = threading.Lock()

    def predict_batch(self, batch, sizes=None) -> list[np.ndarray]:
        with self.lock:
            if self.interrupt_after is not None and len(self.batch_sizes) >= self.interrupt_after:
                raise KeyboardInterrupt
            self.batch_sizes.append(len(batch))
        if self.poison is not None and any(rgb[0, 0, 0] == self.poison for rgb in batch):
            raise RuntimeError("the model choked")
        return super().predict_batch(batch, sizes)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[..., 0] / 255.0


def _photo(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[0, 0, 0] = seed  # each image identifiable by its first pixel
    return rgb


def _folder(root, count: int, sizes=((24, 32),)) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        name = f"{i:02d}.png"
        Image.fromarray(_photo(i + 1, h, w)).save(root / name)
        names.append(name)
    return names


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- the pipeline ------------------------------------------------------------------------------
def test_batched_output_is_the_sequential_output(tmp_path, remover) -> None:
    names = _folder(tmp_path / "in", 7, sizes=((24, 32), (40, 30), (24, 32)))
    exact = BackgroundRemover(RecordingPredictor())
    for model, label in ((exact, "fake"), (remover, "tiny")):
        for batch_size, workers in ((1, 0), (1, 2), (3, 2)):
            out = tmp_path / f"{label}-{batch_size}-{workers}"
            report = remove_batch(model, tmp_path / "in", out, progress=False, batch_size=batch_size, workers=workers)
            assert (report.done, report.failed) == (7, 0) and _files(out) == names  # no temporary files
    for name in names:
        sequential = _pixels(tmp_path / "fake-1-0" / name)
        assert np.array_equal(sequential, _pixels(tmp_path / "fake-3-2" / name)), name
        sequential = _pixels(tmp_path / "tiny-1-0" / name).astype(int)
        assert np.array_equal(sequential, _pixels(tmp_path / "tiny-1-2" / name)), name  # threads change nothing
        # PyTorch's CPU kernels sum in another order for another batch size (~1e-7): after the min-max
        # stretch that can move a rounding by one level on a few pixels, never more.
        assert np.abs(sequential - _pixels(tmp_path / "tiny-3-2" / name)).max() <= 1, name


def test_predict_batch_gets_batches_of_the_requested_size(tmp_path) -> None:
    _folder(tmp_path / "in", 10)
    predictor = RecordingPredictor()
    report = remove_batch(BackgroundRemover(predictor), tmp_path / "in", tmp_path / "out", progress=False, batch_size=4)
    views = RemovalOptions().views  # the model gets each photo's views in the same run
    assert report.done == 10 and sorted(predictor.batch_sizes) == [2 * views, 4 * views, 4 * views]
    predictor = RecordingPredictor()  # a batch larger than the folder: one run
    report = remove_batch(
        BackgroundRemover(predictor), tmp_path / "in", tmp_path / "big", progress=False, batch_size=64
    )
    assert report.done == 10 and predictor.batch_sizes == [10 * views]
    assert default_batch_size(predictor) == CPU_BATCH_SIZE  # no GPU backend


def test_a_bad_file_or_a_failing_model_run_fails_only_that_image(tmp_path) -> None:
    names = _folder(tmp_path / "in", 6)
    (tmp_path / "in" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    predictor = RecordingPredictor(poison=3)  # the model fails on batches holding image 3 (02.png)
    report = remove_batch(
        BackgroundRemover(predictor), tmp_path / "in", tmp_path / "out", progress=False, batch_size=3, workers=2
    )
    assert (report.done, report.skipped, report.failed) == (5, 0, 2)
    assert [p.name for p, _ in report.failures] == ["02.png", "corrupt.jpg"]  # in input order
    reasons = dict((p.name, reason) for p, reason in report.failures)
    assert reasons["02.png"] == "RuntimeError: the model choked"
    assert _files(tmp_path / "out") == [n for n in names if n != "02.png"]


def test_a_failure_while_writing_fails_only_that_image(tmp_path, monkeypatch) -> None:
    _folder(tmp_path / "in", 5)
    remover = BackgroundRemover(RecordingPredictor())
    finish = remover.finish

    def broken_for_one(decoded, raw, options):
        if decoded.rgb[0, 0, 0] == 4:
            raise OSError("disk full")
        return finish(decoded, raw, options)

    monkeypatch.setattr(remover, "finish", broken_for_one)
    report = remove_batch(remover, tmp_path / "in", tmp_path / "out", progress=False, batch_size=2, workers=2)
    assert report.done == 4 and [(p.name, why) for p, why in report.failures] == [("03.png", "OSError: disk full")]
    assert "03.png" not in _files(tmp_path / "out")


def test_existing_outputs_are_skipped(tmp_path) -> None:
    _folder(tmp_path / "in", 5)
    remover = BackgroundRemover(RecordingPredictor())
    assert remove_batch(remover, tmp_path / "in", tmp_path / "out", progress=False, batch_size=2).done == 5
    (tmp_path / "out" / "01.png").unlink()
    before = (tmp_path / "out" / "00.png").stat().st_mtime_ns
    again = remove_batch(remover, tmp_path / "in", tmp_path / "out", progress=False, batch_size=2)
    assert (again.done, again.skipped, again.failed) == (1, 4, 0)
    assert (tmp_path / "out" / "00.png").stat().st_mtime_ns == before
    forced = remove_batch(remover, tmp_path / "in", tmp_path / "out", overwrite=True, progress=False)
    assert (forced.done, forced.skipped) == (5, 0)


def test_ctrl_c_stops_the_run_and_leaves_no_partial_files(tmp_path) -> None:
    _folder(tmp_path / "in", 12)
    predictor = RecordingPredictor(interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        remove_batch(BackgroundRemover(predictor), tmp_path / "in", tmp_path / "out", progress=False, batch_size=2)
    written = _files(tmp_path / "out")
    assert len(written) <= 4 and all(name.endswith(".png") for name in written)  # no temporary files
    for name in written:  # every file there is whole
        assert _pixels(tmp_path / "out" / name).shape == (24, 32, 4)


def test_the_pipeline_holds_a_bounded_number_of_images(tmp_path) -> None:
    prepared, finished, peak = [], [], []
    lock = threading.Lock()

    def prepare(item):
        with lock:
            prepared.append(item)
            peak.append(len(prepared) - len(finished))
        return np.zeros((1,), np.float32), item

    def finish(item, state, output):
        with lock:
            finished.append(item)

    results = []
    run_pipeline(
        range(200),
        prepare,
        lambda batch: list(batch),
        finish,
        lambda i, e: results.append((i, e)),
        batch_size=4,
        workers=2,
    )
    assert sorted(results) == [(i, None) for i in range(200)]
    # at most: prepared ahead (2 × batch + workers), one batch, being finished (batch + 2 × workers) and the
    # batch just handed over: a few batches, never the whole folder
    assert max(peak) <= (2 * 4 + 2) + 4 + (4 + 2 * 2) + 4


# -- formats -----------------------------------------------------------------------------------
def test_webp_is_lossless_by_default_and_keeps_the_alpha(tmp_path) -> None:
    names = _folder(tmp_path / "in", 3)
    remover = BackgroundRemover(RecordingPredictor())
    remove_batch(remover, tmp_path / "in", tmp_path / "png", progress=False)
    report = remove_batch(remover, tmp_path / "in", tmp_path / "webp", progress=False, format="webp")
    assert report.done == 3 and _files(tmp_path / "webp") == [n.replace(".png", ".webp") for n in names]
    for name in names:
        with Image.open(tmp_path / "webp" / name.replace(".png", ".webp")) as img:
            assert img.format == "WEBP" and img.mode == "RGBA"
            assert np.array_equal(np.asarray(img), _pixels(tmp_path / "png" / name))
    lossy = remove_batch(remover, tmp_path / "in", tmp_path / "lossy", progress=False, format="webp", quality=50)
    assert lossy.done == 3


def test_jpeg_needs_a_background_or_a_mask(tmp_path) -> None:
    _folder(tmp_path / "in", 2)
    remover = BackgroundRemover(RecordingPredictor())
    with pytest.raises(ValueError, match="JPEG has no transparency"):
        remove_batch(remover, tmp_path / "in", tmp_path / "out", progress=False, format="jpeg")
    assert not (tmp_path / "out").exists()  # refused before any work
    white = RemovalOptions(bg_color="white")
    report = remove_batch(remover, tmp_path / "in", tmp_path / "out", white, progress=False, format="jpeg", quality=80)
    assert report.done == 2 and _files(tmp_path / "out") == ["00.jpg", "01.jpg"]
    with Image.open(tmp_path / "out" / "00.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (32, 24)
    masks = remove_batch(remover, tmp_path / "in", tmp_path / "m", RemovalOptions(mask_only=True), format="jpeg")
    assert masks.done == 2
    with pytest.raises(ValueError, match="JPEG has no transparency"):  # a translucent colour is not enough
        remove_batch(remover, tmp_path / "in", tmp_path / "x", RemovalOptions(bg_color="#ffffff80"), format="jpeg")


def test_plan_outputs_names_the_format(tmp_path) -> None:
    _folder(tmp_path / "in", 2)
    assert [b.name for _, b in plan_outputs(tmp_path / "in", tmp_path / "out", format="jpeg")] == ["00.jpg", "01.jpg"]
    single = tmp_path / "in" / "00.png"
    assert plan_outputs(single, tmp_path / "o.jpeg", format="jpeg") == [(single, tmp_path / "o.jpeg")]
    assert plan_outputs(single, tmp_path / "d", format="webp") == [(single, tmp_path / "d" / "00.webp")]
    with pytest.raises(ValueError, match=r"outputs are WEBP files; name the output '\.webp'"):
        plan_outputs(single, tmp_path / "o.png", format="webp")
    with pytest.raises(ValueError, match="png is always lossless"):
        OutputFormat("png", quality=50)
    with pytest.raises(ValueError, match=r"quality must be in \[1, 100\]"):
        OutputFormat("jpeg", quality=0)


# -- the command -------------------------------------------------------------------------------
@pytest.fixture
def fake_model(monkeypatch) -> RecordingPredictor:
    predictor = RecordingPredictor()
    monkeypatch.setattr("u2net.cli.common.load_remover", lambda args: BackgroundRemover(predictor))
    return predictor


def test_cli_formats_from_the_suffix_or_the_option(tmp_path, fake_model, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    assert main(["remove", str(photo), str(tmp_path / "cut.webp"), "-q"]) == 0
    assert Image.open(tmp_path / "cut.webp").format == "WEBP"
    assert main(["remove", str(photo), str(tmp_path / "cut.jpg"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: JPEG outputs cannot be transparent: add --bg-color") and err.count("\n") == 1
    assert (
        main(["remove", str(photo), str(tmp_path / "cut.jpg"), "-q", "--bg-color", "white", "--output-quality", "70"])
        == 0
    )
    assert Image.open(tmp_path / "cut.jpg").format == "JPEG"
    assert main(["remove", str(photo), str(tmp_path / "c.png"), "--output-quality", "70"]) == 2
    assert "--output-quality: quality applies to webp and jpeg" in capsys.readouterr().err
    _folder(tmp_path / "in", 3)
    args = ["remove", str(tmp_path / "in"), str(tmp_path / "out"), "-q", "--format", "webp", "--batch-size", "2"]
    assert main(args) == 0 and _files(tmp_path / "out") == ["00.webp", "01.webp", "02.webp"]
    assert "3 image(s): 3 written, 0 skipped, 0 failed" in capsys.readouterr().out
    views = RemovalOptions().views
    assert sorted(fake_model.batch_sizes[-2:]) == [1 * views, 2 * views]


def test_cli_views_and_sharpen_override_the_preset(tmp_path, fake_model, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(2)).save(photo)
    red = _photo(2)[..., 0].astype(np.float64)
    plain = np.rint((red - red.min()) / (red.max() - red.min()) * 255)  # the map, stretched: nothing else
    for extra, runs in (
        ([], 2),
        (["--views", "1"], 1),
        (["--quality", "best"], 4),
        (["--quality", "fast", "--views", "4"], 4),
    ):
        assert main(["remove", str(photo), str(tmp_path / f"cut{runs}{len(extra)}.png"), "-q", *extra]) == 0
        assert fake_model.batch_sizes[-1] == runs, extra
    assert main(["remove", str(photo), str(tmp_path / "plain.png"), "-q", "--views", "1", "--sharpen", "1"]) == 0
    with Image.open(tmp_path / "plain.png") as out:
        np.testing.assert_array_equal(np.asarray(out.getchannel("A")), plain)
    with pytest.raises(SystemExit):
        main(["remove", str(photo), str(tmp_path / "x.png"), "--views", "3"])
    with pytest.raises(SystemExit):
        main(["remove", str(photo), str(tmp_path / "x.png"), "--sharpen", "0"])
    assert "invalid choice: 3" in capsys.readouterr().err


def _streams(monkeypatch, data: bytes) -> io.BytesIO:
    """Give the command ``data`` on stdin; what it writes to stdout comes back in the returned buffer."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8"))
    return out


def test_cli_stdin_and_stdout(tmp_path, fake_model, monkeypatch, capsys) -> None:
    encoded = io.BytesIO()
    Image.fromarray(_photo(5)).save(encoded, format="JPEG")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encoded.getvalue())

    out = _streams(monkeypatch, encoded.getvalue())
    assert main(["remove", "-", "-", "-q"]) == 0
    with Image.open(io.BytesIO(out.getvalue())) as img:
        assert img.format == "PNG" and img.mode == "RGBA" and img.size == (32, 24)
    assert "1 image(s): 1 written" in capsys.readouterr().err  # the summary keeps off the image's stream
    streamed = out.getvalue()

    _streams(monkeypatch, encoded.getvalue())
    assert main(["remove", "-", str(tmp_path / "from_stdin.png"), "-q"]) == 0
    assert np.array_equal(_pixels(tmp_path / "from_stdin.png"), np.asarray(Image.open(io.BytesIO(streamed))))

    out = _streams(monkeypatch, b"")
    assert main(["remove", str(photo), "-", "-q", "--format", "webp", "--mask-only"]) == 0
    with Image.open(io.BytesIO(out.getvalue())) as img:
        assert img.format == "WEBP"  # WebP has no grayscale: a mask comes back as equal RGB channels
        mask = np.asarray(img.convert("RGB"))
        assert (mask == mask[..., :1]).all()

    out = _streams(monkeypatch, b"not an image")
    assert main(["remove", "-", "-", "-q"]) == 1 and out.getvalue() == b""
    assert "failed: -: not a JPEG, PNG" in capsys.readouterr().err
    assert main(["remove", str(tmp_path), "-", "-q"]) == 2
    assert "a folder's outputs cannot go to stdout" in capsys.readouterr().err


def test_provider_names_accept_short_names_in_any_case() -> None:
    from u2net.inference.runtime import provider_names

    # OpenVINO's provider is named whether or not this ONNX Runtime build has it (the benchmarks rely on that)
    names = ["cuda", "OpenVINOExecutionProvider", "CPU"]
    assert provider_names(names) == ["CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match="NoSuchThing"):
        provider_names(["cpu", "NoSuchThing"])


def test_provider_options_set_openvino_inference_precision() -> None:
    import json

    from u2net.inference.runtime import provider_options

    providers = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert provider_options(providers) == [{}, {}]  # fp32: every provider as it is
    openvino, cpu = provider_options(providers, "fp16")
    assert json.loads(openvino["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "f16"}} and cpu == {}
    assert (
        json.loads(provider_options(providers, "bf16")[0]["load_config"])["CPU"]["INFERENCE_PRECISION_HINT"] == "bf16"
    )
    with pytest.raises(ValueError, match="needs its OpenVINO execution provider.*onnxruntime-openvino"):
        provider_options(["CPUExecutionProvider"], "fp16")
    with pytest.raises(ValueError, match="must be one of fp32, fp16, bf16, got 'int4'"):
        provider_options(providers, "int4")


def test_cpu_flags_tell_where_reduced_precision_brings_no_speed(tmp_path) -> None:
    from u2net.inference.runtime import cpu_flags, precision_warning

    ice_lake = tmp_path / "x86"
    ice_lake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    sapphire_rapids = frozenset({"avx512f", "avx512_fp16", "avx512_bf16", "amx_bf16"})
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimdhp bf16\n")
    assert cpu_flags(ice_lake) == {"fpu", "avx2", "avx512f", "avx512_vnni"}  # the first CPU's line
    assert cpu_flags(tmp_path / "missing") is None and cpu_flags(tmp_path) is None
    message = precision_warning("fp16", cpu_flags(ice_lake))
    assert message.startswith("precision fp16: this CPU has no AVX512-FP16 or AMX-FP16, so OpenVINO computes in fp32")
    assert "int8=static" in message and "\n" not in message
    assert "emulates it, slower than fp32" in precision_warning("bf16", cpu_flags(ice_lake))
    for precision in ("fp16", "bf16"):
        assert precision_warning(precision, sapphire_rapids) is None
        assert precision_warning(precision, cpu_flags(arm)) is None
        assert precision_warning(precision, None) is None  # unknown CPU: no claim either way
    assert precision_warning("fp32", frozenset()) is None


@pytest.mark.skipif(
    "OpenVINOExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="needs onnxruntime-openvino",
)
def test_openvino_fp16_predictor_stays_close_to_fp32() -> None:
    import warnings

    from u2net.inference import Predictor
    from u2net.inference.runtime import cpu_flags, precision_warning
    from u2net.models.pretrained import DEFAULT_MODEL

    image = _photo(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fp32, fp16 = (
            Predictor.from_path(
                DEFAULT_MODEL, precision=p, backend="onnxruntime", providers=["OpenVINOExecutionProvider"]
            )
            for p in ("fp32", "fp16")
        )
    # said once, for fp16, where this CPU has no native fp16; nothing where it has
    said = [str(w.message) for w in caught if str(w.message).startswith("precision")]
    expected = precision_warning("fp16", cpu_flags())
    assert said == ([expected] if expected else [])
    assert fp16.backend.providers[0] == "OpenVINOExecutionProvider" and fp16.info.extra["precision"] == "fp16"
    assert np.abs(fp16.predict(image) - fp32.predict(image)).mean() < 0.01


def test_cli_providers_and_input_size_errors(tmp_path, capsys) -> None:
    from u2net.models.pretrained import DEFAULT_MODEL, bundled_weights_path

    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    args = ["remove", str(photo), str(tmp_path / "out.png"), "-q"]
    assert main([*args, "--providers", "NoSuchThing"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --providers: unknown ONNX Runtime provider 'NoSuchThing'\n"
    assert main([*args, "--providers", "CPU", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "precision fp16 on ONNX Runtime needs its OpenVINO execution provider" in err and err.count("\n") == 1
    # on PyTorch (the bundled tag with fp16 goes there) a CPU cannot autocast to fp16: said once, at load time
    assert main([*args, "--precision", "fp16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fp16 needs CUDA" in err and err.count("\n") == 1
    import onnxruntime

    missing = [p for p in onnxruntime.get_all_providers() if p not in onnxruntime.get_available_providers()]
    assert main([*args, "--providers", missing[0].removesuffix("ExecutionProvider")]) == 2
    err = capsys.readouterr().err
    assert f"none of {missing[0]} is available in this ONNX Runtime" in err and err.count("\n") == 1

    onnx_file = str(bundled_weights_path(DEFAULT_MODEL))  # exported at a fixed 1×3×320×320
    assert main([*args, "--model", onnx_file, "--input-size", "512"]) == 2
    err = capsys.readouterr().err
    assert "input is fixed at 320x320, so --input-size 512 cannot change it" in err and err.count("\n") == 1
    assert main([*args, "--model", onnx_file, "--providers", "cpu", "--batch-size", "2"]) == 0
    assert Image.open(tmp_path / "out.png").mode == "RGBA"


def test_cli_passes_the_input_size_providers_and_precision_to_the_predictor(tmp_path, monkeypatch) -> None:
    seen = {}

    def from_path(source, device, **kwargs):
        seen.update(kwargs)
        predictor = RecordingPredictor()
        predictor.backend = types.SimpleNamespace(fixed_size=None)
        return predictor

    monkeypatch.setattr("u2net.inference.Predictor.from_path", from_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    assert main(["remove", str(photo), str(tmp_path / "o.png"), "-q", "--input-size", "512", "--providers", "CPU"]) == 0
    assert seen == {
        "precision": "fp32",
        "image_size": 512,
        "backend": "onnxruntime",
        "providers": ["CPUExecutionProvider"],
    }
    assert main(["remove", str(photo), str(tmp_path / "p.png"), "-q", "--precision", "bf16"]) == 0
    # no --providers: --backend auto picks (PyTorch, for bf16)
    assert seen["precision"] == "bf16" and seen["backend"] == "auto"
