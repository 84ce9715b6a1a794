"""A consumer that ignores the contract: it acks everything at once and does nothing.

The conformance battery must fail it.
"""

from __future__ import annotations

import contextlib
import os

import pika

connection = pika.BlockingConnection(pika.URLParameters(os.environ["LEVERET_URL"]))
channel = connection.channel()
channel.basic_consume(os.environ["LEVERET_QUEUE"], lambda ch, m, p, b: None, auto_ack=True)
with contextlib.suppress(KeyboardInterrupt):
    channel.start_consuming()
