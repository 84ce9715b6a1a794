"""Broker addresses and logs: credentials never leak (no broker)."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from leveret import connection
from leveret.errors import ConfigurationError
from leveret.logs import redact_urls


def test_redact_hides_every_password() -> None:
    text = "a amqp://u:p%40ss@h:5672/v and amqps://admin:s3cret@other/ end"
    assert connection.redact(text) == "a amqp://u:***@h:5672/v and amqps://admin:***@other/ end"
    assert connection.redact("amqp://h:5672/") == "amqp://h:5672/"


def test_split_urls_takes_a_cluster() -> None:
    assert connection.split_urls("amqp://a/, amqp://b/") == ["amqp://a/", "amqp://b/"]
    with pytest.raises(ConfigurationError, match="not an AMQP URL: 'http://u:\\*\\*\\*@h/'"):
        connection.split_urls("http://u:pw@h/")
    with pytest.raises(ConfigurationError):
        connection.split_urls(" , ")


def test_with_query_keeps_what_the_user_set() -> None:
    assert connection.with_query("amqp://h/?heartbeat=5", heartbeat=30) == "amqp://h/?heartbeat=5"
    assert connection.with_query("amqp://h/", heartbeat=30) == "amqp://h/?heartbeat=30"


def test_log_processor_redacts_urls() -> None:
    event = redact_urls(None, "info", {"event": "x", "broker": "amqp://u:pw@h/", "n": 1})
    assert event == {"event": "x", "broker": "amqp://u:***@h/", "n": 1}


def test_unreachable_message_names_the_fix_without_the_password() -> None:
    text = connection.unreachable(["amqp://u:pw@h1/", "amqp://u:pw@h2/"])
    assert "pw" not in text
    assert "rabbitmq-server -detached" in text and "docker compose up -d rabbitmq" in text


def test_library_log_lines_carry_no_password() -> None:
    import structlog

    with capture_logs() as logs:
        structlog.get_logger("t").info(
            "worker.consuming", broker=connection.describe("amqp://u:pw@h/")
        )
    assert logs[0]["broker"] == "amqp://u:***@h/"
