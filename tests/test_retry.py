"""The settle decision: retry or dead-letter, and the headers it writes (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime

from leveret import DeadLetter, wire
from leveret.errors import SchemaViolation
from leveret.retry import encoded_size, failure, fit, format_traceback, truncate

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def delivery(**headers: object) -> wire.Delivery:
    return wire.Delivery(
        body=b"{}", exchange="ex", routing_key="k", message_id="m", type="t", headers=headers
    )


def boom() -> RuntimeError:
    try:
        raise RuntimeError("disk full")
    except RuntimeError as exc:
        return exc


def test_transient_failure_goes_to_the_retry_exchange_with_count_plus_one() -> None:
    d = failure(delivery(**{wire.VERSION: 1}), "q", boom(), consumer="q@host:1", now=NOW)
    assert (d.exchange, d.outcome, d.reason) == ("q.retry", "retry_scheduled", "handler-error")
    h = d.headers
    assert h[wire.RETRY_COUNT] == 1
    assert h[wire.VERSION] == 1
    assert h[wire.ERROR_TYPE] == "RuntimeError"
    assert h[wire.ERROR_MESSAGE] == "disk full"
    assert "raise RuntimeError" in h[wire.ERROR_TRACEBACK]
    assert h[wire.FIRST_FAILED_AT] == h[wire.LAST_FAILED_AT] == "2026-01-02T03:04:05.000+00:00"
    assert (h[wire.ORIGINAL_EXCHANGE], h[wire.ORIGINAL_ROUTING_KEY]) == ("ex", "k")
    assert (h[wire.FAILED_BY], h[wire.FAILED_QUEUE]) == ("q@host:1", "q")


def test_later_failures_keep_the_first_time_and_origin() -> None:
    earlier = delivery(
        **{wire.RETRY_COUNT: 2, wire.FIRST_FAILED_AT: "then", wire.ORIGINAL_EXCHANGE: "orig"}
    )
    h = failure(earlier, "q", boom(), consumer="c", now=NOW).headers
    assert h[wire.RETRY_COUNT] == 3
    assert h[wire.FIRST_FAILED_AT] == "then"
    assert h[wire.ORIGINAL_EXCHANGE] == "orig"


def test_broker_headers_are_not_copied() -> None:
    h = failure(
        delivery(**{"x-death": [{}], "x-delivery-count": 2, "app": 1}), "q", boom(), consumer="c"
    ).headers
    assert "x-death" not in h and "x-delivery-count" not in h
    assert h["app"] == 1


def test_bad_messages_and_give_ups_go_straight_to_the_dead_exchange() -> None:
    bad = failure(delivery(), "q", SchemaViolation("t v1: n: wrong"), consumer="c")
    assert (bad.exchange, bad.reason, bad.outcome) == (
        "q.dead",
        "schema-violation",
        "dead_lettered",
    )
    assert wire.ERROR_TRACEBACK not in bad.headers
    gave_up = failure(delivery(), "q", DeadLetter("customer gone"), consumer="c")
    assert (gave_up.exchange, gave_up.reason) == ("q.dead", "dead-letter")


def test_the_last_attempt_is_labelled_dead_lettered_but_still_routed_by_the_broker() -> None:
    d = failure(delivery(**{wire.RETRY_COUNT: 2}), "q", boom(), consumer="c", max_attempts=3)
    assert (d.exchange, d.outcome) == ("q.retry", "dead_lettered")


def test_huge_errors_are_truncated_to_fit_a_frame() -> None:
    d = failure(delivery(), "q", RuntimeError("é" * 100_000), consumer="c")
    assert len(d.headers[wire.ERROR_MESSAGE].encode()) <= 1024
    assert d.headers[wire.ERROR_MESSAGE].endswith("[truncated]")


def test_truncate_keeps_the_end_of_tracebacks() -> None:
    assert truncate("abcdef" * 10, 20, keep="end").endswith("def")
    assert truncate("short", 20) == "short"


def test_fit_drops_the_traceback_then_the_largest_application_headers() -> None:
    headers = {
        wire.RETRY_COUNT: 1,
        wire.ERROR_TRACEBACK: "t" * 4000,
        "big": "b" * 10_000,
        "medium": "m" * 3000,
        "small": "s",
    }
    fit(headers, 5000)
    assert wire.ERROR_TRACEBACK not in headers and "big" not in headers
    assert headers["medium"] == "m" * 3000 and headers["small"] == "s"
    assert headers[wire.DROPPED_HEADERS] == "big"
    assert encoded_size(headers) <= 5000


def test_fit_leaves_a_small_table_alone() -> None:
    headers = {wire.RETRY_COUNT: 1, "a": "b", "nested": {"x": [1, 2]}}
    fit(headers, 1000)
    assert headers == {wire.RETRY_COUNT: 1, "a": "b", "nested": {"x": [1, 2]}}


def test_the_traceback_is_cheap_and_readable() -> None:
    def inner() -> None:
        raise ValueError("bad value")

    try:
        try:
            inner()
        except ValueError as exc:
            raise TimeoutError("handler exceeded its timeout") from exc
    except TimeoutError as exc:
        text = format_traceback(exc)
    assert text.startswith("Traceback (most recent call last):\n")
    assert "line " in text and ", in inner\n" in text
    assert '    raise ValueError("bad value")\n' in text  # the source line, as cached
    assert "ValueError: bad value\n" in text
    assert "direct cause of the following exception" in text
    assert text.endswith("TimeoutError: handler exceeded its timeout\n")
    assert "^" not in text  # no caret lines: no ast parse per frame


def test_deep_tracebacks_keep_the_innermost_frames_within_4096_bytes() -> None:
    def recurse(n: int) -> None:
        if n == 0:
            raise RuntimeError("at the bottom")
        recurse(n - 1)

    try:
        recurse(200)
    except RuntimeError as exc:
        err = exc
    assert "outer frames left out" in format_traceback(err)
    h = failure(delivery(), "q", err, consumer="c", now=NOW).headers[wire.ERROR_TRACEBACK]
    assert len(h.encode()) <= 4096
    assert h.count(", in recurse\n") <= 40
    assert h.endswith("RuntimeError: at the bottom\n")
