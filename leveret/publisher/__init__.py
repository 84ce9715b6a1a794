"""Publishers: :class:`Publisher` (blocking, pika) and :class:`AsyncPublisher` (asyncio, aio-pika).

Both build the same envelope through :class:`~leveret.publisher.core.PublisherCore`,
wait for the broker's confirm, and raise the same errors.
"""

from leveret.publisher.aio import AsyncPublisher
from leveret.publisher.sync import Publisher

__all__ = ["AsyncPublisher", "Publisher"]
