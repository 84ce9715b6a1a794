"""Everything in one process, for a newcomer and for the tests.

:func:`serve` applies both topologies (the export task's and the status
store's), then runs on one event loop: the export worker, the status store's
worker, and the FastAPI app under uvicorn. It returns once ``stop`` is set, the
server stops (Ctrl-C), or a worker fails; the workers finish their in-flight
messages first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn

from examples.webapp import tasks
from examples.webapp.fastapi_app import create_app
from examples.webapp.settings import Settings
from leveret import Worker, admin
from leveret.status import app as status_app
from leveret.status.store import JobStore


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    started: Callable[[], None] | None = None,
) -> None:
    """Run the workers and the web app until ``stop`` is set or the server exits.

    Args:
        settings: the example's settings.
        stop: set it to shut everything down.
        started: called once the web server listens.

    Raises:
        BrokerUnavailable: no broker at ``settings.broker_url``.
    """
    stop = stop or asyncio.Event()
    settings.make_dirs()
    export_app = tasks.build_app(settings)
    await asyncio.to_thread(admin.apply, settings.broker_url, export_app.topology)
    await asyncio.to_thread(
        admin.apply, settings.broker_url, status_app.topology(settings.status_queue)
    )
    store = JobStore(settings.database_url)
    workers = [
        Worker(export_app, settings.broker_url, concurrency=4, grace=10.0),
        Worker(
            status_app.build_app(store, queue=settings.status_queue),
            settings.broker_url,
            concurrency=2,
            grace=10.0,
        ),
    ]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, store),
            host=settings.host,
            port=settings.port,
            log_level="warning",
        )
    )
    running = [asyncio.create_task(w.run()) for w in workers]
    web = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    announce = asyncio.create_task(_when_started(server, started))
    try:
        await asyncio.wait([*running, web, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        announce.cancel()
        stopping.cancel()
        server.should_exit = True
        for worker in workers:
            worker.stop()
        results = await asyncio.gather(web, *running, return_exceptions=True)
        store.close()
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


async def _when_started(server: uvicorn.Server, started: Callable[[], None] | None) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    if started is not None:
        started()
