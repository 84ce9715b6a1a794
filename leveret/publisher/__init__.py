"""Publishers: :class:`Publisher` (blocking, pika) and :class:`AsyncPublisher` (asyncio).

Both build the same envelope through :class:`~leveret.publisher.core.PublisherCore`,
wait for the broker's confirm, and raise the same errors. :class:`Publisher` is
imported on first use, so that a worker (:mod:`leveret.amqp` only) does not
load pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from leveret.publisher.aio import AsyncPublisher

if TYPE_CHECKING:
    from leveret.publisher.sync import Publisher

__all__ = ["AsyncPublisher", "Publisher"]


def __getattr__(name: str) -> Any:
    if name == "Publisher":
        from leveret.publisher.sync import Publisher

        return Publisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
