"""The example's settings: one small frozen value, read from the environment at the edge."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from leveret.status import app as status_app

DEFAULT_URL = "amqp://localhost:5672/"  # RabbitMQ's default user
DEFAULT_DATA = Path(tempfile.gettempdir()) / "leveret-webapp"


@dataclass(frozen=True)
class Settings:
    """Where things are and how the example behaves.

    Args:
        broker_url: the RabbitMQ URL.
        data_dir: holds ``exports/`` (the files), ``mailbox/`` (the "emails")
            and, by default, the SQLite database.
        database: a SQLAlchemy URL for the job status store and the idempotency
            keys (default: ``sqlite:///<data_dir>/leveret.db``).
        exchange: the tasks' exchange.
        queue: the export worker's queue.
        status_queue: the status store's queue.
        retry_delays: seconds before each retry of a failed export.
        max_attempts: attempts before an export fails for good.
        chunk_rows: rows written between two progress reports.
        chunk_pause: seconds the worker waits per chunk, standing in for a slow
            query so that a person can watch the bar move.
        host: where the web app listens.
        port: its port.
    """

    broker_url: str = DEFAULT_URL
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA)
    database: str | None = None
    exchange: str = "reports"
    queue: str = "reports.export"
    status_queue: str = status_app.QUEUE
    retry_delays: tuple[float, ...] = (1.0, 3.0)
    max_attempts: int = 3
    chunk_rows: int = 1000
    chunk_pause: float = 0.25
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def database_url(self) -> str:
        """The database's URL."""
        return self.database or f"sqlite:///{self.data_dir / 'leveret.db'}"

    @property
    def exports_dir(self) -> Path:
        """Finished exports, served under ``/files/``."""
        return self.data_dir / "exports"

    @property
    def mailbox_dir(self) -> Path:
        """Where the worker "sends" its emails: one ``.eml`` file each."""
        return self.data_dir / "mailbox"

    def make_dirs(self) -> None:
        """Create the data directories (SQLite needs its file's directory)."""
        for path in (self.data_dir, self.exports_dir, self.mailbox_dir):
            path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``LEVERET_URL``, ``LEVERET_STATUS_DB``, ``WEBAPP_DATA`` and ``PORT``."""
        return cls(
            broker_url=os.environ.get("LEVERET_URL", DEFAULT_URL),
            data_dir=Path(os.environ.get("WEBAPP_DATA", DEFAULT_DATA)),
            database=os.environ.get("LEVERET_STATUS_DB") or None,
            port=int(os.environ.get("PORT", "8000")),
        )
