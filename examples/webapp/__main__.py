"""``python -m examples.webapp``: the example web app, its workers and its status store.

Needs RabbitMQ (``LEVERET_URL``, default ``amqp://localhost:5672/``).
Jobs are recorded in ``leveret.db`` (SQLite) in ``WEBAPP_DATA`` (default
``/tmp/leveret-webapp``) unless ``LEVERET_STATUS_DB`` names another database
(``postgresql+psycopg://...``); the exports and the "emails" go there too.
``PORT`` changes the web app's port (8000).
Ctrl-C stops it: in-flight exports finish first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from sqlalchemy.engine import make_url

from examples.webapp.settings import Settings
from examples.webapp.stack import serve
from leveret import LeveretError, logs


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def started() -> None:
        database = make_url(settings.database_url).render_as_string(hide_password=True)
        print(
            f"\n  Open http://{settings.host}:{settings.port}/ to request an export"
            f"\n  (jobs in {database}, files in {settings.exports_dir}/,"
            f" emails in {settings.mailbox_dir}/). Ctrl-C stops.\n",
            file=sys.stderr,
            flush=True,
        )

    await serve(settings, stop, started=started)


if __name__ == "__main__":
    logs.configure(level=os.environ.get("LEVERET_LOG_LEVEL", "WARNING"))
    try:
        asyncio.run(main(Settings.from_env()))
    except LeveretError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        sys.exit(130)
