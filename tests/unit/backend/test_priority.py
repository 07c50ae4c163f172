"""Annotators first (priority.py): the order of model calls at the gate, through the predictor with the
packaged models, and the class each /predict is counted under. Threads and events fix every order
checked here; nothing is timed (the speed is bench/priority_bench.py's)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from prelabel_backend.app import Backend, create_app
from prelabel_backend.label_config import parse
from prelabel_backend.media import MediaFetcher
from prelabel_backend.metrics import Metrics
from prelabel_backend.predictor import Predictor
from prelabel_backend.priority import BATCH, HEADER, INTERACTIVE, Gate, Priority, of_header
from prelabel_backend.settings import Settings
from tests.conftest import SEED_CONFIG, data_uri, scenes


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    """Polls check() until it holds; fails the test after `timeout` s (a hang, not a slow machine)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


class Calls:
    """Model calls in threads, each entering the gate and logging "<name> in" / "<name> out"; a call
    leaves when its event is set."""

    def __init__(self, gate: Gate, slots: int = 1) -> None:
        self.gate, self.slots = gate, slots
        self.log: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.threads: dict[str, threading.Thread] = {}

    def start(self, name: str, priority: Priority) -> None:
        self.release[name] = threading.Event()

        def call() -> None:
            with self.gate.turn(priority, self.slots):
                self.log.append(f"{name} in")
                assert self.release[name].wait(30)
                self.log.append(f"{name} out")

        self.threads[name] = threading.Thread(target=call, daemon=True)
        self.threads[name].start()

    def finish(self, name: str) -> None:
        """Lets the call leave, and waits until it has left the gate."""
        self.release[name].set()
        self.threads[name].join(30)
        assert not self.threads[name].is_alive(), f"{name} never left"

    def join(self) -> None:
        for event in self.release.values():
            event.set()
        for thread in self.threads.values():
            thread.join(30)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("batch", BATCH),
        (" Batch ", BATCH),
        (None, INTERACTIVE),
        ("", INTERACTIVE),
        ("interactive", INTERACTIVE),
        ("bulk", INTERACTIVE),
    ],
)
def test_only_the_batch_header_makes_a_request_batch_work(value: str | None, expected: Priority) -> None:
    assert of_header(value) == expected


def test_a_person_goes_before_a_waiting_batch_call_and_waits_for_no_batch_call_at_the_gate() -> None:
    calls = Calls(Gate(hold=0))
    calls.start("batch 1", BATCH)
    wait_until("batch 1 holds the gate", lambda: calls.log == ["batch 1 in"])
    calls.start("batch 2", BATCH)
    wait_until("batch 2 waits", lambda: calls.gate.counts() == (0, 1, 1))
    calls.start("person", INTERACTIVE)
    wait_until("the person runs beside batch 1", lambda: "person in" in calls.log)
    calls.finish("batch 1")
    assert calls.gate.counts() == (1, 0, 1)  # batch 2 still waits: the person runs
    calls.finish("person")
    wait_until("batch 2 runs", lambda: "batch 2 in" in calls.log)
    calls.join()
    assert calls.log == ["batch 1 in", "person in", "batch 1 out", "person out", "batch 2 in", "batch 2 out"]


def test_batch_calls_run_as_many_as_the_model_has_instances_and_one_while_a_person_labels() -> None:
    calls = Calls(Gate(hold=3600), slots=2)
    calls.start("batch 1", BATCH)
    calls.start("batch 2", BATCH)
    wait_until("two batch calls at once, nobody labeling", lambda: calls.gate.counts() == (0, 2, 0))
    calls.start("batch 3", BATCH)
    wait_until("a third waits: the model has two instances", lambda: calls.gate.counts() == (0, 2, 1))
    calls.start("person", INTERACTIVE)
    wait_until("the person is in", lambda: "person in" in calls.log)
    calls.finish("batch 1")
    calls.finish("batch 2")
    calls.finish("person")
    wait_until("batch 3 runs", lambda: "batch 3 in" in calls.log)
    calls.start("batch 4", BATCH)
    wait_until("within the hold, batch 4 waits for batch 3", lambda: calls.gate.counts() == (0, 1, 1))
    calls.finish("batch 3")
    wait_until("then it runs", lambda: "batch 4 in" in calls.log)
    calls.join()


def test_once_the_hold_is_over_batch_calls_run_side_by_side_again() -> None:
    calls = Calls(Gate(hold=0), slots=2)
    calls.start("person", INTERACTIVE)
    calls.finish("person")
    calls.start("batch 1", BATCH)
    calls.start("batch 2", BATCH)
    wait_until("two batch calls at once", lambda: calls.gate.counts() == (0, 2, 0))
    calls.join()


def test_the_store_takes_one_turn_per_model_call(store) -> None:  # noqa: ANN001
    loaded = store.get("shapes-detect.pt")
    turns = 0

    @contextlib.contextmanager
    def turn() -> Iterator[None]:
        nonlocal turns
        turns += 1
        yield

    images = [s.image for s in scenes(301, 5)]
    assert len(store.predict(loaded, images, conf=0.25, turn=turn)) == 5
    assert turns == -(-5 // loaded.batch)


def test_a_person_waits_for_the_running_call_only_not_for_the_rest_of_the_batch_requests(settings, store, monkeypatch) -> None:  # noqa: ANN001
    """Batch request A's first model call holds the model; batch request B's call waits at the gate;
    a person's 1-task request then runs its call before B's and before A's next one."""
    predictor = Predictor(dataclasses.replace(settings, priority_hold=3600), store, MediaFetcher(settings), Metrics())
    who = {96: "A", 112: "B", 128: "person"}  # each request's images have their own width

    def tasks(seed: int, n: int, width: int) -> list[dict[str, Any]]:
        return [{"id": i, "data": {"image": data_uri(s.image)}} for i, s in enumerate(scenes(seed, n, width=width, height=96))]

    log: list[str] = []
    first_call_of_a, release_a = threading.Event(), threading.Event()
    predict = store.predict

    def logged(loaded: Any, images: list[Any], conf: float, **kwargs: Any) -> list[Any]:
        name = who[images[0].shape[1]]
        log.append(f"{name} in")
        if name == "A" and not first_call_of_a.is_set():
            first_call_of_a.set()
            assert release_a.wait(30)
        try:
            return predict(loaded, images, conf, **kwargs)
        finally:
            log.append(f"{name} out")

    monkeypatch.setattr(store, "predict", logged)
    config = parse(SEED_CONFIG, settings)
    predictor.predict(config, tasks(310, 1, 128), None)  # a person labeling: batch calls one at a time
    log.clear()
    answers: dict[str, int] = {}

    def run(name: str, priority: Priority, batch: list[dict[str, Any]]) -> None:
        answers[name] = len(predictor.predict(config, batch, None, priority))

    threads = [threading.Thread(target=run, args=("A", BATCH, tasks(311, 8, 96)), daemon=True)]
    threads[0].start()
    assert first_call_of_a.wait(30)
    threads.append(threading.Thread(target=run, args=("B", BATCH, tasks(312, 8, 112)), daemon=True))
    threads[1].start()
    wait_until("B's call waits at the gate", lambda: predictor.gate is not None and predictor.gate.counts() == (0, 1, 1))
    threads.append(threading.Thread(target=run, args=("person", INTERACTIVE, tasks(313, 1, 128)), daemon=True))
    threads[2].start()
    wait_until("the person's call reached the model", lambda: "person in" in log)
    release_a.set()
    for thread in threads:
        thread.join(60)
    assert answers == {"A": 8, "B": 8, "person": 1}
    assert log.index("person in") < log.index("B in")
    assert log.index("person out") < log.index("B in")
    assert log.index("person out") < [i for i, entry in enumerate(log) if entry == "A in"][1]  # A's next call waited too


def test_the_priority_setting_reads_on_and_off() -> None:
    assert Settings.from_env({}).priority is True
    assert Settings.from_env({"PRIORITY": "off"}).priority is False
    assert Settings.from_env({"PRIORITY": "on", "PRIORITY_HOLD": "5"}).priority_hold == 5.0


def test_predictor_without_priority_has_no_gate(settings, store) -> None:  # noqa: ANN001
    assert Predictor(dataclasses.replace(settings, priority=False), store, MediaFetcher(settings), Metrics()).gate is None


def test_metrics_count_each_predict_under_its_class(settings, store) -> None:  # noqa: ANN001
    backend = Backend(settings, store)
    backend.load_defaults()
    client = create_app(settings, backend, load="none").test_client()
    body = {"tasks": [{"id": 1, "data": {"image": data_uri(scenes(320, 1)[0].image)}}], "label_config": SEED_CONFIG}

    def served() -> dict[str, float]:
        text = client.get("/metrics").get_data(as_text=True)
        return {
            cls: float(found.group(1))
            if (found := re.search(rf'prelabel_backend_predict_seconds_count{{priority="{cls}"}} (\S+)', text))
            else 0.0
            for cls in (INTERACTIVE, BATCH)
        }

    assert served() == {INTERACTIVE: 0, BATCH: 0}
    assert client.post("/predict", json=body, headers={HEADER: "batch"}).status_code == 200
    assert served() == {INTERACTIVE: 0, BATCH: 1}
    assert client.post("/predict", json=body).status_code == 200  # Label Studio's: no header
    assert served() == {INTERACTIVE: 1, BATCH: 1}
    assert "prelabel_backend_batch_wait_seconds_count 1.0" in client.get("/metrics").get_data(as_text=True)
