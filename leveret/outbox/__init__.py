"""The transactional outbox: publish a task if, and only if, the database write commits.

A web app writes its rows and the task in one database transaction::

    with Session(engine) as session, session.begin():
        session.add(order)
        outbox.add(session, ExportRequested(user_id=42))

:func:`add` builds the envelope exactly as :class:`~leveret.publisher.Publisher`
would (same body bytes, headers and message id) and inserts it as a row of the
outbox table, in the caller's transaction; nothing touches the broker. A rolled
back transaction leaves no row, so nothing is ever published for it.

A :class:`Relay` (``leveret outbox relay``) reads unsent rows in id order,
publishes them with publisher confirms under their own message id, and marks
them sent once confirmed. A relay killed between the confirm and the mark
publishes those rows again on its next pass, with the same message id: delivery
is at least once, and consumers deduplicate by message id. A row the broker
refuses (unroutable, nacked, missing exchange) records ``attempts`` and
``last_error`` and is retried with a growing backoff, without holding up the
rows behind it; a row that can never be routed stays unsent, with its error,
until someone fixes the topology or deletes it.

On PostgreSQL, several relays may run: each locks its batch with
``FOR UPDATE SKIP LOCKED`` until the batch is marked. SQLite has no row locks:
run one relay per database file.
"""

from leveret.outbox.relay import Relay
from leveret.outbox.table import (
    DEFAULT_TABLE,
    MAX_ERROR_LENGTH,
    Status,
    add,
    create_table,
    envelope_of,
    outbox_table,
    purge,
    status,
)

__all__ = [
    "DEFAULT_TABLE",
    "MAX_ERROR_LENGTH",
    "Relay",
    "Status",
    "add",
    "create_table",
    "envelope_of",
    "outbox_table",
    "purge",
    "status",
]
