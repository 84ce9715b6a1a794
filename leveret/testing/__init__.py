"""Test an app's handlers without RabbitMQ: an in-memory broker with a virtual clock.

    from leveret.testing import Broker

    def test_export_retries_then_succeeds():
        broker = Broker(app)
        broker.publish(ExportRequested(user_id=42))
        broker.run_until_idle()            # attempt 1 fails: the copy waits in tier 1
        broker.advance(1)                  # tier 1's TTL passes: attempt 2 runs
        assert [o.outcome for o in broker.processed] == ["retry_scheduled", "processed"]

The broker declares the app's topology as ``leveret topology apply`` would,
publishes through the publishers' own envelope code, and runs each delivery
through the worker's decision: the same validation, the same retry and
dead-letter headers, the same :class:`~leveret.Outcome` records. See
``docs/testing.md`` for what it does not model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from leveret.consumers.app import App
from leveret.testing.broker import Broker, Runaway
from leveret.testing.records import Held, Properties, Published

__all__ = ["Broker", "Held", "Properties", "Published", "Runaway", "broker_fixture"]


def broker_fixture(app: App | Callable[[], App], *, name: str = "broker") -> Any:
    """A pytest fixture giving each test a fresh :class:`Broker` for ``app``.

    In a ``conftest.py``::

        from leveret.testing import broker_fixture
        from myproject.tasks import app

        broker = broker_fixture(app)

    Args:
        app: the app, or a function returning it.
        name: the fixture's name.
    """
    import pytest  # a test-time dependency only

    def fixture() -> Broker:
        return Broker(app if isinstance(app, App) else app())

    return pytest.fixture(name=name)(fixture)
