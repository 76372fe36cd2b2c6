"""Planning a removal job's outputs (``u2net.inference.planning``): one output per input, named after it
and the format, names that never depend on the other files, and outputs that would overwrite an input of
the same run."""

from __future__ import annotations

import pytest
from PIL import Image

from u2net.inference import BackgroundRemover, remove_batch
from u2net.inference.batch import OutputFormat
from u2net.inference.planning import plan_outputs

from .conftest import RecordingPredictor, _files, _folder, _photo


def test_plan_outputs(tmp_path) -> None:
    (tmp_path / "in" / "x").mkdir(parents=True)
    for name in ("x/p.jpg", "x/p.png", "q.JPG"):
        Image.new("RGB", (4, 4)).save(tmp_path / "in" / name, format="PNG" if name.endswith("png") else "JPEG")
    pairs = {
        a.relative_to(tmp_path / "in").as_posix(): b.relative_to(tmp_path).as_posix()
        for a, b in plan_outputs(tmp_path / "in", tmp_path / "out")
    }
    assert pairs == {"q.JPG": "out/q.png", "x/p.jpg": "out/x/p.jpg.png", "x/p.png": "out/x/p.png.png"}
    # an output folder inside the input folder is not searched
    (tmp_path / "in" / "cut").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "in" / "cut" / "q.png")
    assert len(plan_outputs(tmp_path / "in", tmp_path / "in" / "cut")) == 3
    # every input gets its own output, whatever the names (and on case-insensitive disks too)
    for name in ("x/p.jpg.png", "x/P.webp", "Q.png", "r.gif"):
        Image.new("RGB", (4, 4)).save(tmp_path / "in" / name, format="PNG")
    outputs = [b.as_posix().lower() for _, b in plan_outputs(tmp_path / "in", tmp_path / "out")]
    assert len(outputs) == len(set(outputs)) == 8 and outputs.count(f"{tmp_path / 'out' / 'r.png'}".lower()) == 1
    single = tmp_path / "in" / "q.JPG"
    assert plan_outputs(single, tmp_path / "o.png") == [(single, tmp_path / "o.png")]
    assert plan_outputs(single, tmp_path / "outdir") == [(single, tmp_path / "outdir" / "q.png")]
    with pytest.raises(ValueError, match="outputs are PNG"):
        plan_outputs(single, tmp_path / "o.jpg")
    with pytest.raises(ValueError, match="must differ"):
        plan_outputs(tmp_path / "in", tmp_path / "in")
    with pytest.raises(FileNotFoundError):
        plan_outputs(tmp_path / "nothing", tmp_path / "out")


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


def test_adding_a_file_never_maps_an_input_onto_another_inputs_output(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_photo(1)).save(src / "a.png")
    Image.fromarray(_photo(2)).save(src / "b.png")
    remover = BackgroundRemover(RecordingPredictor())
    assert remove_batch(remover, src, out, progress=False).done == 2
    # The output a.png.png was that of the input a.png.png (the earlier code) or could be a.png's (with an a.jpg
    # beside it): a.png.png is refused whatever else is there, and a.png as soon as its name would be a.png.png.
    Image.fromarray(_photo(3)).save(src / "a.png.png", format="PNG")
    why = "ambiguous output name: {} and {} may both be written to a.png.png; rename one of them"
    again = remove_batch(remover, src, out, progress=False)
    assert (again.done, again.skipped) == (0, 2)
    assert [(p.name, reason) for p, reason in again.failures] == [("a.png.png", why.format("a.png.png", "a.png"))]
    Image.fromarray(_photo(4)).save(src / "a.jpg")  # a.jpg and a.png now clash: a.png would become a.png.png
    third = remove_batch(remover, src, out, progress=False)
    assert (third.done, third.skipped) == (1, 1)  # a.jpg; b.png. Nothing is "done" on another input's output
    assert [(p.name, reason) for p, reason in third.failures] == [
        ("a.png", why.format("a.png", "a.png.png")),
        ("a.png.png", why.format("a.png.png", "a.png")),
    ]
    assert _files(out) == ["a.jpg.png", "a.png", "b.png"]
    refused: list = []
    pairs = plan_outputs(src, out, refused=refused)
    assert [(a.name, b.name) for a, b in pairs] == [("a.jpg", "a.jpg.png"), ("b.png", "b.png")]
    assert [p.name for p, _ in refused] == ["a.png", "a.png.png"]
    # without a list for them, every input still gets a name of its own
    assert len({b.name.lower() for _, b in plan_outputs(src, out)}) == 4


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_through_a_linked_folder_onto_its_input_is_refused(tmp_path, overwrite) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _folder(src / "sub", 1)
    _folder(src, 1)
    out.mkdir()
    (out / "sub").symlink_to(src / "sub", target_is_directory=True)
    photo = (src / "sub" / "00.png").read_bytes()
    report = remove_batch(BackgroundRemover(RecordingPredictor()), src, out, overwrite=overwrite, progress=False)
    assert (report.done, report.skipped) == (1, 0)
    assert [(p.relative_to(src).as_posix(), why.split(":")[0]) for p, why in report.failures] == [
        ("sub/00.png", f"its output {out / 'sub' / '00.png'} is the input {src / 'sub' / '00.png'} of this run")
    ]
    assert (src / "sub" / "00.png").read_bytes() == photo
