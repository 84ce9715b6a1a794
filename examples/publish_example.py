"""Publish a few demo export tasks, the way a Flask or Django view would.

    LEVERET_URL=amqp://localhost:5672/ python examples/publish_example.py 3

In a web app, create one Publisher when the process starts and share it between
requests and threads (it is thread-safe); ``publish`` returns the message id once
the broker has confirmed the message, so a view can answer "queued" truthfully.
Run ``leveret topology apply`` (or ``leveret demo``) once first: publishing to an
exchange that does not exist fails with ``TopologyMissing``.
"""

from __future__ import annotations

import argparse
import os
import sys

from leveret.demo import ExportRequested
from leveret.publisher import Publisher

DEFAULT_URL = "amqp://localhost:5672/"  # RabbitMQ's default user


def main(argv: list[str] | None = None) -> int:
    """Publish COUNT export tasks and print their message ids."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("count", nargs="?", type=int, default=3, help="tasks to publish (3)")
    count = parser.parse_args(argv).count
    url = os.environ.get("LEVERET_URL", DEFAULT_URL)

    with Publisher(url) as publisher:
        for user_id in range(1, count + 1):
            message_id = publisher.publish(ExportRequested(user_id=user_id, format="csv"))
            print(f"published demo.export v1 for user {user_id}: {message_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
