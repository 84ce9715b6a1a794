"""Publish a few demo export tasks, the way a Flask or Django view would.

    LEVERET_URL=amqp://guest:guest@localhost:5672/ python examples/publish_example.py 3

The publisher is thread-safe: create one per process and share it between the
web server's threads. ``publish`` returns once the broker confirmed the message.
"""

from __future__ import annotations

import os
import sys

from leveret.demo import ExportRequested
from leveret.publisher import Publisher


def main(argv: list[str]) -> int:
    """Publish ``argv[0]`` (default 3) export tasks and print their message ids."""
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    count = int(argv[0]) if argv else 3
    url = os.environ.get("LEVERET_URL", "amqp://guest:guest@localhost:5672/")
    with Publisher(url) as publisher:
        for user_id in range(1, count + 1):
            message_id = publisher.publish(ExportRequested(user_id=user_id, format="csv"))
            print(f"published export for user {user_id}: {message_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
