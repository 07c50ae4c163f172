"""The operator's log levels: what kopf retries is a warning; what it gives up on stays an error; a
resync that succeeded is DEBUG."""

from __future__ import annotations

import logging

import pytest

from prelabel_operator.__main__ import QuietTimers, RetryIsAWarning


def record(name: str, message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_a_retried_request_is_a_warning_and_an_escalated_one_an_error() -> None:
    retried = record("kopf._cogs.clients.watching", "Request attempt #1/9 failed; will retry: GET ... -> APITooManyRequestsError(...)")
    escalated = record("kopf._cogs.clients.watching", "Request attempt #9/9 failed; escalating: GET ... -> APIServerError(...)")
    waiting = record("kopf.objects", "Handler 'on_change' failed temporarily: not ready: LabelStudioUnreachable: ...")
    permanent = record("kopf.objects", "Handler 'on_change' failed permanently: ...")
    ours = record("prelabel_operator.handlers", "registration failed; will retry")  # only kopf's own retry lines
    for r in (retried, escalated, waiting, permanent, ours):
        assert RetryIsAWarning().filter(r) is True  # never dropped
    assert (retried.levelno, retried.levelname) == (logging.WARNING, "WARNING")
    assert (escalated.levelno, escalated.levelname) == (logging.ERROR, "ERROR")
    assert (waiting.levelno, waiting.levelname) == (logging.WARNING, "WARNING")
    assert permanent.levelno == logging.ERROR and ours.levelno == logging.ERROR


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_a_resync_that_succeeded_is_debug_and_shown_only_at_debug(level: int) -> None:
    root, before = logging.getLogger(), logging.getLogger().level
    root.setLevel(level)  # LOG_LEVEL
    try:
        check_quiet_timers(level)
    finally:
        root.setLevel(before)


def check_quiet_timers(level: int) -> None:
    succeeded = record("kopf.objects", "Timer 'resync' succeeded.", logging.INFO)
    assert QuietTimers().filter(succeeded) is (level == logging.DEBUG)
    assert succeeded.levelno == logging.DEBUG
    for kept in (record("kopf.objects", "Timer 'resync' failed with an exception. Will retry."),
                 record("kopf.objects", "Handler 'on_change' succeeded.", logging.INFO)):
        before = kept.levelno
        assert QuietTimers().filter(kept) is True and kept.levelno == before
