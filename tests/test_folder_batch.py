"""Folder mode: the pipelined, batched runner (same outputs as one image at a time, failures isolated,
bounded queues, Ctrl-C), output formats, and the ONNX Runtime providers and precision behind the remove
command's speed options."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from u2net.inference import BackgroundRemover, RemovalOptions, remove_batch, run_pipeline
from u2net.inference.batch import CPU_BATCH_SIZE, default_batch_size

from .conftest import RecordingPredictor, _files, _folder, _photo, _pixels


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
    every_view = RemovalOptions(unsure_share=0.0)  # the model gets each photo's two views in the same run
    predictor = RecordingPredictor()
    report = remove_batch(
        BackgroundRemover(predictor), tmp_path / "in", tmp_path / "out", every_view, progress=False, batch_size=4
    )
    assert report.done == 10 and sorted(predictor.batch_sizes) == [4, 8, 8]
    predictor = RecordingPredictor()  # a batch larger than the folder: one run
    report = remove_batch(
        BackgroundRemover(predictor), tmp_path / "in", tmp_path / "big", every_view, progress=False, batch_size=64
    )
    assert report.done == 10 and predictor.batch_sizes == [20]
    predictor = RecordingPredictor()  # the default: the photos, then the mirror images of the unsure ones (all here)
    report = remove_batch(
        BackgroundRemover(predictor), tmp_path / "in", tmp_path / "dflt", progress=False, batch_size=4
    )
    assert report.done == 10 and predictor.batch_sizes == [4, 4, 4, 4, 2, 2]
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


# -- ONNX Runtime providers and precision (u2net.inference.runtime) ----------------------------


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


def test_int8_saturates_on_x86_without_vnni() -> None:
    from u2net.inference.runtime import int8_saturates

    assert int8_saturates(frozenset({"sse2", "avx2", "fma"}))  # AVX2 alone: VPMADDUBSW saturates
    for flags in ({"sse2", "avx2", "avx512_vnni"}, {"sse2", "avx2", "avx_vnni"}, {"sse2", "amx_int8"}):
        assert not int8_saturates(frozenset(flags))
    assert not int8_saturates(frozenset({"fp", "asimd", "asimddp"}))  # ARM
    assert not int8_saturates(None)  # unknown CPU: as before, the int8 file


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
