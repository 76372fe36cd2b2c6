"""The folder pipeline's byte budget: items start only while their estimated bytes in flight fit the budget
(or alone), in order, with every failure still reported once; remove_batch costs images from their headers."""

from __future__ import annotations

import struct
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from u2net.data.io import load_rgb_alpha
from u2net.inference import BackgroundRemover, remove_batch, run_pipeline
from u2net.inference.folder import PIPELINE_BYTES_PER_PIXEL, _pipeline_bytes

BUDGET = 100


class Tracker:
    """The bytes and items in flight, from each ``prepare``'s start to its item's ``on_result``, and the most
    of either seen at once while the bytes exceeded the budget."""

    def __init__(self, costs: dict[int, int], budget: int = BUDGET) -> None:
        self.costs, self.budget = costs, budget
        self.lock = threading.Lock()
        self.bytes = self.count = self.most_items = 0
        self.over_budget_items = 0  # the most items in flight while their bytes exceeded the budget
        self.started: list[int] = []
        self.results: list[tuple[int, BaseException | None]] = []

    def prepare(self, item: int) -> tuple[np.ndarray, int]:
        with self.lock:
            self.started.append(item)
            self.bytes += self.costs[item]
            self.count += 1
            self.most_items = max(self.most_items, self.count)
            if self.bytes > self.budget:
                self.over_budget_items = max(self.over_budget_items, self.count)
        return np.full((2,), item, np.float32), item

    def on_result(self, item: int, error: BaseException | None) -> None:
        with self.lock:
            if item in self.started:  # an item whose cost failed never started
                self.bytes -= self.costs[item]
                self.count -= 1
            self.results.append((item, error))


def _costs(count: int) -> dict[int, int]:
    """Mostly items of 10–60 bytes, every seventh one larger than the whole budget."""
    rng = np.random.default_rng(0)
    return {i: (BUDGET + 50 if i % 7 == 3 else int(rng.integers(10, 61))) for i in range(count)}


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 0), (4, 0), (1, 2), (4, 2)])
def test_bytes_in_flight_stay_within_the_budget_but_for_a_lone_item(batch_size: int, workers: int) -> None:
    costs = _costs(60)
    tracker = Tracker(costs)
    run_pipeline(
        costs,
        tracker.prepare,
        lambda batch: list(batch),
        lambda item, state, output: None,
        tracker.on_result,
        batch_size=batch_size,
        workers=workers,
        cost=costs.__getitem__,
        memory_budget=BUDGET,
    )
    assert sorted(tracker.results, key=lambda r: r[0]) == [(i, None) for i in costs]  # each once, all done
    assert tracker.over_budget_items == 1  # only ever the one item larger than the budget, alone
    assert tracker.most_items > 1  # small items still overlap
    if workers == 0:  # prepare runs as its item starts: the starts themselves, in input order
        assert tracker.started == list(costs)


def test_without_a_cost_only_the_queues_bound_the_items() -> None:
    costs = dict.fromkeys(range(40), BUDGET)  # each alone fills the budget, which no cost enforces
    tracker = Tracker(costs)
    run_pipeline(costs, tracker.prepare, lambda b: list(b), lambda *_: None, tracker.on_result, batch_size=4, workers=0)
    assert len(tracker.results) == 40 and tracker.most_items > 1


def test_a_budget_of_nothing_runs_one_item_at_a_time() -> None:
    costs = dict.fromkeys(range(12), 1)
    tracker = Tracker(costs, budget=0)
    run_pipeline(
        costs,
        tracker.prepare,
        lambda batch: list(batch),
        lambda *_: None,
        tracker.on_result,
        batch_size=4,
        workers=2,
        cost=costs.__getitem__,
        memory_budget=0,
    )
    assert tracker.most_items == 1 and sorted(tracker.results) == [(i, None) for i in range(12)]
    assert tracker.started == list(range(12))  # one at a time: in input order on any thread
    with pytest.raises(ValueError, match="memory_budget must be >= 0"):
        run_pipeline([], tracker.prepare, list, lambda *_: None, tracker.on_result, memory_budget=-1)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_failure_is_reported_once_and_frees_its_bytes(workers: int) -> None:
    """Failures in cost, prepare, predict and finish each fail their item only; the budget gets their bytes back
    (else the run would stall on the next large item)."""
    costs = _costs(30)

    def cost(item: int) -> int:
        if item == 5:
            raise OSError("no header")
        return costs[item]

    tracker = Tracker(costs)

    def prepare(item: int):
        if item == 8:
            raise ValueError("corrupt")
        return tracker.prepare(item)

    def predict(batch: np.ndarray) -> list:
        if (batch[:, 0] == 13).any():
            raise RuntimeError("the model choked")
        return list(batch)

    def finish(item: int, state, output) -> None:
        if item == 21:
            raise OSError("disk full")

    run_pipeline(
        costs, prepare, predict, finish, tracker.on_result, batch_size=3, workers=workers, cost=cost, memory_budget=80
    )
    errors = {item: error for item, error in tracker.results}
    assert len(tracker.results) == 30 and sorted(errors) == list(range(30))
    failed = {item: f"{type(error).__name__}: {error}" for item, error in errors.items() if error is not None}
    assert failed == {
        5: "OSError: no header",
        8: "ValueError: corrupt",
        13: "RuntimeError: the model choked",
        21: "OSError: disk full",
    }
    assert tracker.bytes == 0 and tracker.count == 0


def test_ctrl_c_stops_a_budgeted_run() -> None:
    costs = dict.fromkeys(range(50), 40)
    tracker = Tracker(costs)
    runs = []

    def predict(batch: np.ndarray) -> list:
        runs.append(len(batch))
        if len(runs) == 3:
            raise KeyboardInterrupt
        return list(batch)

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(
            costs,
            tracker.prepare,
            predict,
            lambda *_: None,
            tracker.on_result,
            batch_size=2,
            workers=2,
            cost=costs.__getitem__,
            memory_budget=BUDGET,
        )
    assert len(tracker.started) < 10  # the rest of the folder never started


# -- remove_batch ------------------------------------------------------------------------------
def _gif_with_a_huge_screen(width: int, height: int) -> bytes:
    """A 35-byte GIF: one 1×1 frame on a ``width``×``height`` logical screen, which decodes at the screen's size."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0x80) + b"\x00\x00\x00\xff\xff\xff"
    return screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def test_images_are_costed_from_their_headers(tmp_path) -> None:
    Image.new("RGB", (300, 200)).save(tmp_path / "photo.jpg")
    assert _pipeline_bytes((tmp_path / "photo.jpg", tmp_path / "out.png")) == 300 * 200 * PIPELINE_BYTES_PER_PIXEL
    (tmp_path / "bomb.gif").write_bytes(_gif_with_a_huge_screen(13000, 13000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        bomb = _pipeline_bytes((tmp_path / "bomb.gif", tmp_path / "out.png"))
    assert bomb == 13000 * 13000 * PIPELINE_BYTES_PER_PIXEL  # a few bytes of file, gigabytes decoded: it runs alone
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert _pipeline_bytes((tmp_path / "corrupt.jpg", tmp_path / "out.png")) == 0  # prepare reports why
    assert _pipeline_bytes((tmp_path / "missing.jpg", tmp_path / "out.png")) == 0


@pytest.fixture
def images_in_flight(monkeypatch, remover) -> tuple[BackgroundRemover, list[int]]:
    """The tiny remover, counting the images between their decoding and their output image: the most at once
    comes back in the list."""
    lock, now, most = threading.Lock(), [0], [0]
    watched = BackgroundRemover(remover.predictor)
    finish = watched.finish

    def decoding(image):
        if isinstance(image, Image.Image):  # its own call on the opened file: counted already
            return load_rgb_alpha(image)
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            return load_rgb_alpha(image)
        except Exception:
            with lock:
                now[0] -= 1
            raise

    def outputting(*args):
        with lock:
            now[0] -= 1
        return finish(*args)

    monkeypatch.setattr("u2net.inference.remover.load_rgb_alpha", decoding)
    monkeypatch.setattr(watched, "finish", outputting)
    return watched, most


def test_remove_batch_within_a_tiny_budget_holds_one_image_at_a_time(tmp_path, monkeypatch, images_in_flight) -> None:
    watched, most = images_in_flight
    (tmp_path / "in").mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)).save(tmp_path / f"in/{i}.png")
    (tmp_path / "in" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    unbounded = remove_batch(watched, tmp_path / "in", tmp_path / "all", progress=False, batch_size=4, workers=2)
    assert most[0] >= 4  # a batch of four decoded before the first is finished

    most[0] = 0
    monkeypatch.setattr("u2net.inference.batch.DEFAULT_MEMORY_BUDGET", 1)  # any image fills it
    report = remove_batch(watched, tmp_path / "in", tmp_path / "one", progress=False, batch_size=4, workers=2)
    assert most[0] == 1
    assert (report.done, report.failed) == (unbounded.done, unbounded.failed) == (6, 1)
    assert [(p.name, why) for p, why in report.failures] == [(p.name, why) for p, why in unbounded.failures]
    for i in range(6):  # the same outputs (batches of one here: PyTorch may round a level apart, never more)
        with Image.open(tmp_path / f"all/{i}.png") as a, Image.open(tmp_path / f"one/{i}.png") as b:
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
