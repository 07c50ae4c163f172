"""Hostile input to the real backend process (python -m prelabel_backend, gunicorn): generated
requests checked against its OpenAPI description, decompression bombs, huge and truncated images,
non-image URLs, 10,000-task requests, oversized bodies and slow-loris clients. Every answer is a 2xx
or a 4xx with a reason, and the same worker process serves throughout (bench/fuzz_bench.py: 10,000)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from prelabel_local.backend import BackendProcess
from tests.conftest import SEED_CONFIG, data_uri, scenes
from tests.integration import hostile

READ_TIMEOUT = 4  # REQUEST_READ_TIMEOUT for this backend, seconds


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, int]]:
    """One backend for the module (THREADS=4: fewer than the slow clients), and its worker's PID."""
    env = {"THREADS": "4", "MEDIA_ALLOWED_HOSTS": "127.0.0.1", "MEDIA_MAX_BYTES": str(4 << 20),
           "REQUEST_READ_TIMEOUT": str(READ_TIMEOUT), "MEDIA_CACHE_ITEMS": "0"}
    server = BackendProcess(env, tmp_path_factory.mktemp("hostile") / "backend.log").wait_ready()
    try:
        workers = hostile.worker_pids(server.proc.pid)
        assert len(workers) == 1, workers
        yield server, workers[0]
    finally:
        server.stop()


def predict(url: str, images: list[str], timeout: float = 300) -> list[dict]:
    tasks = [{"id": i, "data": {"image": image}} for i, image in enumerate(images)]
    response = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}, timeout=timeout)
    assert response.status_code == 200, response.text[:500]
    return response.json()["results"]


def inline(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def test_generated_requests_get_no_5xx_and_answers_match_the_openapi(backend, tmp_path: Path) -> None:  # noqa: ANN001
    """About 1000 requests from schemathesis (bench/fuzz_bench.py: 10,000), every answer checked
    against openapi.yaml; the backend's own /metrics counts them and finds no 5xx."""
    server, _ = backend
    answered, failures = hostile.fuzz(server.url, 1000, tmp_path)
    assert not failures, failures[0]
    assert sum(answered.values()) >= 1000 and not [status for status in answered if status.startswith("5")], answered
    assert answered.get("200", 0) > 100 and answered.get("422", 0) > 10, answered  # not all refused at the door
    assert requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"].keys() >= {"/health", "/setup", "/predict", "/webhook"}


def test_decompression_bombs_and_huge_images_are_refused_per_task(backend) -> None:  # noqa: ANN001
    """A PNG claiming 50000x50000 (over Pillow's bomb limit) and one claiming 12000x12000 (under it,
    over MEDIA_MAX_PIXELS) are refused from their headers; the real image in the same request is predicted."""
    server, _ = backend
    scene = scenes(15, 1)[0]
    results = predict(server.url, [inline(hostile.png_bomb(50000, 50000)), inline(hostile.png_bomb(12000, 12000)), data_uri(scene.image)])
    assert "decompression-bomb limit" in results[0]["errors"][0] and not results[0]["result"]
    assert "12000x12000 pixels, over MEDIA_MAX_PIXELS (89478485)" in results[1]["errors"][0]
    assert results[2]["result"] and "errors" not in results[2]


def test_truncated_oversized_and_non_image_media_get_reasons(backend) -> None:  # noqa: ANN001
    server, _ = backend
    png = hostile.png_bomb(64, 64)
    with hostile.hostile_media_server({"/big.jpg": b"\xff" * (5 << 20), "/cut.png": png[: len(png) // 2]}) as media:
        refs = [f"{media}/cut.png", f"{media}/big.jpg", f"{media}/huge", f"{media}/html", f"{media}/loop",
                "http://169.254.169.254/latest/meta-data/", inline(png[:40])]
        results = predict(server.url, refs)
    reasons = [" ".join(r.get("errors", [])) for r in results]
    assert all(not r["result"] for r in results) and all(reasons), reasons
    assert "not an image OpenCV can decode" in reasons[0]
    assert "over MEDIA_MAX_BYTES" in reasons[1] and "over MEDIA_MAX_BYTES" in reasons[2]  # declared, then streamed
    assert "not an image OpenCV can decode" in reasons[3]  # an HTML page
    assert "more than 5 redirects" in reasons[4]
    assert "169.254.169.254" in reasons[5] and "MEDIA_ALLOWED_HOSTS" in reasons[5]  # never fetched: not an allowed host
    assert "not an image OpenCV can decode" in reasons[6]


def test_a_10000_task_request_is_answered_task_by_task(backend) -> None:  # noqa: ANN001
    """Processed, not refused: fetches run in a sliding window (MEDIA_FETCH_THREADS + batch images at
    a time), so memory does not grow with the task count; each task says why it has no prediction."""
    server, _ = backend
    results = predict(server.url, [inline(b"not a png %d" % i) for i in range(10_000)], timeout=600)
    assert len(results) == 10_000
    assert all("not an image OpenCV can decode" in r["errors"][0] for r in results)


def test_a_body_over_max_request_bytes_is_413_with_the_reason(backend) -> None:  # noqa: ANN001
    server, _ = backend
    body = b'{"tasks": [], "pad": "' + b"x" * (33 << 20) + b'"}'
    response = requests.post(f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 413 and "MAX_REQUEST_BYTES" in response.json()["error"]
    bad = requests.post(f"{server.url}/setup", json={"project": "1.1", "schema": SEED_CONFIG, "hostname": 5}, timeout=30)
    assert bad.status_code == 400 and "'hostname' must be a string" in bad.json()["error"]


def test_slow_loris_clients_do_not_stop_health(backend) -> None:  # noqa: ANN001
    """40 clients sending their heads a byte at a time and 8 sending bodies so, against 4 threads:
    /health still answers each time, and the slow ones are let go after REQUEST_READ_TIMEOUT."""
    server, _ = backend
    with hostile.slow_clients(server.port, heads=40, bodies=8) as socks:
        for _ in range(READ_TIMEOUT + 2):
            assert requests.get(f"{server.url}/health", timeout=READ_TIMEOUT).status_code == 200
            hostile.trickle(socks)
            time.sleep(1)
        assert all(hostile.closed_by_server(sock) for sock in socks)
    assert requests.get(f"{server.url}/health", timeout=READ_TIMEOUT).status_code == 200


def test_the_same_worker_served_everything(backend) -> None:  # noqa: ANN001
    """Last in this module: no input above killed or replaced the worker; its RSS is reported."""
    server, worker = backend
    assert hostile.worker_pids(server.proc.pid) == [worker]
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    print(f"worker {worker} RSS after the hostile inputs: {hostile.rss_mib(worker):.0f} MiB")
