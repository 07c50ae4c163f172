"""One /predict of the pre-labeling driver against fake backends that speak Label Studio's ML-backend
protocol as third-party backends do (httpx's MockTransport: no Label Studio is involved in this step):
what is queued for storing, what fails with which reason, and when a pass stops sending."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from prelabel_operator.prelabel import Attempts
from prelabel_operator.prelabel_driver import Driver, Plan, Tally, Target
from prelabel_operator.spec import PrelabelSpec

TASKS = [{"id": 11, "data": {"text": "buy now"}}, {"id": 12, "data": {"text": "hello"}}]


async def _nothing(progress: object) -> None:
    return None


def predict(answer: Any, version: str = "1796529612", any_version: bool = False, status: int = 200) -> tuple[Driver, list[Any]]:
    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=answer) if not isinstance(answer, str) else httpx.Response(status, text=answer)

    driver = Driver("team", "sdk", _nothing)
    driver.attempts, driver._tally = Attempts(max_attempts=1), Tally(answered=set())
    queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue()

    async def go() -> list[Any]:
        async with httpx.AsyncClient(base_url="http://backend", transport=httpx.MockTransport(backend)) as client:
            await driver._predict(client, 1, version, any_version, TASKS, queue)
        return [queue.get_nowait() for _ in range(queue.qsize())]

    return driver, asyncio.run(go())


def test_text_tasks_answered_as_the_sdk_answers_are_stored_under_the_reported_version() -> None:
    choice = {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["spam"]}}
    driver, queued = predict({"results": [{"result": [choice], "score": 0.8}, {"result": []}]})  # no model_version anywhere
    assert queued == [[{"task": 11, "result": [choice], "score": 0.8, "model_version": "1796529612"},
                       {"task": 12, "result": [], "score": None, "model_version": "1796529612"}]]
    assert driver._tally.stored == 2 and not driver._tally.stop


def test_a_batch_answered_wholly_by_another_version_stops_the_pass() -> None:
    driver, queued = predict({"model_version": 1796529700, "results": [{"result": []}, {"result": []}]})
    assert queued == [] and driver._tally.stop and driver._tally.answered == {"1796529700"}
    assert driver.progress.failed == 0  # stale is not failed: the tasks wait for the version to settle
    kept, stored = predict({"model_version": 1796529700, "results": [{"result": []}, {"result": []}]}, version="", any_version=True)
    assert [p["model_version"] for p in stored[0]] == ["1796529700"] * 2 and not kept._tally.stop  # KeepExisting stores it


def test_an_answer_that_is_not_json_or_is_short_fails_the_tasks_with_the_reason() -> None:
    driver, _ = predict("<html>oops</html>")
    assert [f["task"] for f in driver.progress.failures] == [11, 12]
    assert "answer is not JSON" in driver.progress.failures[0]["reason"] and "<html>oops" in driver.progress.failures[0]["reason"]
    empty, _ = predict({"model_version": "1"})  # JSON without results
    assert "answered no results for 2 tasks" in empty.progress.failures[0]["reason"]
    short, _ = predict({"results": [{"result": []}]})
    assert "spec.prelabel.batchSize: 1" in short.progress.failures[0]["reason"]


def test_a_backend_error_inside_a_pass_is_an_outage_not_a_crash_of_the_daemon() -> None:
    """/predict answering 500 inside the pass's task group (a model raising, as an ML SDK backend's
    user code can) reaches the daemon's loop as Outage, which it shows in status and retries: an
    ExceptionGroup would end the daemon, and status would keep saying what it said before (as it did
    on the images' CPython 3.11.2, which wraps what an `except*` clause raises)."""
    from label_studio_sdk import AsyncLabelStudio

    from prelabel_operator.prelabel_driver import Outage
    from prelabel_operator.spec import PrelabelSpec

    pages = iter([{"tasks": TASKS, "total": 2}])

    def label_studio(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(pages, {"tasks": [], "total": 2}))

    def backend(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"detail": "AttributeError: 'WordSentiment' object has no attribute 'label_interface'"})

    driver = Driver("team", "sdk", _nothing)
    driver.attempts, driver._tally = Attempts(max_attempts=3), Tally(answered=set())

    async def go() -> None:
        async with (httpx.AsyncClient(transport=httpx.MockTransport(label_studio)) as ls_http,
                    httpx.AsyncClient(base_url="http://backend", transport=httpx.MockTransport(backend)) as client):
            ls = AsyncLabelStudio(base_url="http://ls", api_key="k", httpx_client=ls_http)
            await driver._project(ls, client, 1, Plan("1", []), PrelabelSpec(), stopped=False)

    with pytest.raises(Outage, match=r"HTTP 500 to /predict: .*label_interface"):
        asyncio.run(go())


def test_no_except_star_clause_raises_a_new_exception() -> None:
    """CPython 3.11.0-3.11.3 (Debian bookworm's python3, the base of the images built here) wraps an
    exception raised inside `except*` in a new ExceptionGroup; later versions do not. Code that must
    behave the same on both never raises a new exception there (a bare `raise` is fine)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    found = []
    for path in [*(root / "operator").rglob("*.py"), *(root / "backend_image").rglob("*.py"), *(root / "local").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.TryStar):
                found += [f"{path.name}:{r.lineno}" for h in node.handlers for r in ast.walk(h) if isinstance(r, ast.Raise) and r.exc is not None]
    assert found == []


def test_a_replaced_key_gives_tasks_that_failed_for_good_their_tries_again() -> None:
    """Fault 4: tasks whose media the backend could not fetch under a rotated token failed for good;
    once the Secret holds the new token, they are tried again. The same key keeps them failed."""
    driver = Driver("ns", "name", _nothing)
    spec = PrelabelSpec(max_attempts=1)
    old, new = (Target("http://ls", key, "http://backend", None, (1,)) for key in ("old-token", "new-token"))
    driver._renew_attempts(old, spec)
    assert driver.attempts is not None
    driver.attempts.fail(1, 7, "Label Studio refused the personal access token (HTTP 401)", now=0.0)
    driver._renew_attempts(old, spec)
    assert set(driver.attempts.given_up()) == {7}
    driver._renew_attempts(new, spec)
    assert driver.attempts.given_up() == {} and driver.attempts.due(7, now=0.0)


def test_a_project_no_longer_served_takes_its_failed_tasks_along() -> None:
    driver = Driver("ns", "name", _nothing)
    spec = PrelabelSpec(max_attempts=1)
    both, one = Target("http://ls", "k", "http://backend", None, (1, 2)), Target("http://ls", "k", "http://backend", None, (2,))
    attempts = driver._renew_attempts(both, spec)
    attempts.fail(1, 7, "unreadable", now=0.0)
    attempts.fail(2, 9, "unreadable", now=0.0)
    assert set(driver._renew_attempts(one, spec).given_up()) == {9}
