"""The web app on FastAPI: one AsyncPublisher for the app's life, the job store to read.

    POST /exports          publish the task; 202 {"job_id", "status_url", "page_url"}
    GET  /jobs/{id}        the job's record from the status store (404 if unknown)
    GET  /jobs/{id}/page   the progress page: polls the record every second
    GET  /files/{name}     the finished file

The job id is the task's message id (and its correlation id): the worker's
status events carry it, so the store's record for it is the job's progress.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from examples.webapp import web
from examples.webapp.settings import Settings
from examples.webapp.tasks import queued
from leveret import AsyncPublisher, LeveretError, Unroutable
from leveret.status import timestamp
from leveret.status.store import JobStore

log = structlog.get_logger(__name__)


def create_app(settings: Settings, store: JobStore | None = None) -> FastAPI:
    """The FastAPI app.

    Args:
        settings: the example's settings.
        store: the job status store to read (default: one on ``settings.database_url``).
    """
    settings.make_dirs()
    jobs = store or JobStore(settings.database_url)
    publisher = AsyncPublisher(settings.broker_url, app_id="webapp")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with publisher:  # connects on first publish, closes at shutdown
            yield

    app = FastAPI(title="leveret example: report exports", lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    def form() -> str:
        return web.page("form")

    @app.post("/exports", status_code=202)
    async def request_export(request: web.ExportRequest) -> JSONResponse:
        job_id = str(uuid.uuid4())
        at = timestamp()  # before the task: "queued" sorts before the worker's "started"
        try:
            await publisher.publish(
                request.message(),
                exchange=settings.exchange,
                message_id=job_id,
                correlation_id=job_id,
            )
        except LeveretError as exc:
            log.error("webapp.not_queued", error=str(exc))
            raise HTTPException(503, f"the export could not be queued: {exc}") from exc
        try:
            await publisher.publish(queued(job_id, at), routing_key=job_id)
        except Unroutable:
            log.warning("webapp.no_status_store", job_id=job_id)  # the task is queued all the same
        answer = web.links(job_id)
        return JSONResponse(answer, status_code=202, headers={"Location": answer["status_url"]})

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> JSONResponse:
        record: dict[str, Any] | None = jobs.get(job_id)  # a plain def: FastAPI runs it in a thread
        if record is None:
            raise HTTPException(404, f"no job {job_id}")
        return JSONResponse(record, headers={"Cache-Control": "no-store"})

    @app.get("/jobs/{job_id}/page", response_class=HTMLResponse)
    def job_page(job_id: str) -> str:
        return web.page("job")

    @app.get("/files/{name}")
    def download(name: str) -> FileResponse:
        path = web.export_file(settings.exports_dir, name)
        if path is None:
            raise HTTPException(404, "no such file")
        return FileResponse(path, media_type="text/csv", filename=name)

    return app
