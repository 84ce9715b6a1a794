"""Job status: events any consumer publishes, and the store that records them.

* :mod:`leveret.status.events`: the ``leveret.job.status`` message type.
* :mod:`leveret.status.store`: :class:`JobStore`, one row per job (SQLite, PostgreSQL).
* :mod:`leveret.status.app`: the store's consumer, ``leveret worker leveret.status.app:app``.

SQLAlchemy is needed for the store only: ``pip install leveret[sql]``.
"""

from leveret.status.events import EXCHANGE, JobStatus, State, timestamp

__all__ = ["EXCHANGE", "JobStatus", "State", "timestamp"]
