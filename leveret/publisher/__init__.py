"""Publishers: :class:`Publisher` (blocking, for threads) and :class:`AsyncPublisher` (asyncio).

Both build the same envelope through :class:`~leveret.publisher.core.PublisherCore`,
write the same frames (:mod:`leveret.amqp`), wait for the broker's confirm, and
raise the same errors.
"""

from __future__ import annotations

from leveret.publisher.aio import AsyncPublisher
from leveret.publisher.sync import Publisher

__all__ = ["AsyncPublisher", "Publisher"]
