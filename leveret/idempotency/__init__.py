"""Run a handler's side effect once per message id, though the message may come twice.

Delivery is at least once (``docs/contract.md`` §4): a redelivered message runs
its handler again. :class:`Once` guards a side effect (send the email, charge the
card) with a record keyed by the message id and a step name::

    from leveret.idempotency import Once, SQLStore

    once = Once(SQLStore(engine), ttl=timedelta(days=7), lease=timedelta(minutes=5))

    @app.handler(ExportRequested, queue="reports.export")
    def export(message: ExportRequested, ctx: Context) -> None:
        path = build_report(message)                       # safe to repeat
        once.run(ctx, "send-email", lambda: send_email(message.user_id, path))

    # or, in an async handler:
    #     await once.arun(ctx, "send-email", lambda: asend_email(...))

The first caller takes a **lease** on the key and runs the function. On success
the key is marked done, with the function's return value (a small JSON value);
a later caller with the same key skips the function and gets that value back.
A caller that finds the key leased by another worker raises :class:`InProgress`,
a :class:`~leveret.Retry`: the message goes down the retry tiers and checks
again later, rather than holding a worker slot while it waits. If the function
raises, the lease is released, so the retry can run it.

The guarantee is *at most once while the lease holds*, not exactly once: a
worker that dies mid-call never releases its lease, and once the lease expires
a later delivery runs the function again. Choose a lease longer than the side
effect's longest run and shorter than the queue's retry delays added up, so that
the retries of a message whose worker died outlive the dead worker's lease.

Done records are kept ``ttl`` after they finish, then forgotten (Redis expires
them; SQL rows are deleted by :meth:`Once.purge`); a duplicate that arrives
later runs the function again, so keep ``ttl`` above the longest time a message
can spend in retries or in the dead-letter queue before a replay.

Stores: :class:`SQLStore` (SQLite or PostgreSQL through SQLAlchemy 2, extra
``leveret[sql]``) and :class:`RedisStore` (redis-py, extra ``leveret[redis]``).
"""

from typing import TYPE_CHECKING, Any

from leveret.idempotency.once import DEFAULT_LEASE, DEFAULT_TTL, InProgress, Once
from leveret.idempotency.store import Claim, Store

if TYPE_CHECKING:
    from leveret.idempotency.redis import RedisStore
    from leveret.idempotency.sql import SQLStore, idempotency_table


def __getattr__(name: str) -> Any:
    # Each store loads its client library on first use: a Redis user needs no
    # SQLAlchemy installed, and the other way round.
    if name in ("SQLStore", "idempotency_table"):
        from leveret.idempotency import sql

        return getattr(sql, name)
    if name == "RedisStore":
        from leveret.idempotency.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_TTL",
    "Claim",
    "InProgress",
    "Once",
    "RedisStore",
    "SQLStore",
    "Store",
    "idempotency_table",
]
