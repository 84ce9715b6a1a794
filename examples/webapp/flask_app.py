"""The same web app on Flask, with one thread-safe Publisher shared by every request thread.

    POST /exports          publish the task; 202 {"job_id", "status_url", "page_url"}
    GET  /jobs/<id>        the job's record from the status store (404 if unknown)
    GET  /jobs/<id>/page   the progress page
    GET  /files/<name>     the finished file

Run it next to the workers (``python -m examples.webapp`` runs them)::

    flask --app 'examples.webapp.flask_app:create_app()' run --port 8001
"""

from __future__ import annotations

import uuid

import structlog
from flask import Flask, abort, jsonify, request, send_file
from flask.typing import ResponseReturnValue
from pydantic import ValidationError

from examples.webapp import web
from examples.webapp.settings import Settings
from examples.webapp.tasks import queued
from leveret import LeveretError, Publisher, Unroutable
from leveret.status import timestamp
from leveret.status.store import JobStore

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, store: JobStore | None = None) -> Flask:
    """The Flask app; ``app.extensions["leveret"]`` is its publisher (close it at exit).

    Args:
        settings: the example's settings (default: from the environment).
        store: the job status store to read (default: one on ``settings.database_url``).
    """
    settings = settings or Settings.from_env()
    settings.make_dirs()
    jobs = store or JobStore(settings.database_url)
    # One publisher for the process: threads that publish at once share its
    # connection, their confirms pipelined on one channel.
    publisher = Publisher(settings.broker_url, app_id="webapp-flask")
    app = Flask(__name__)
    app.extensions["leveret"] = publisher

    @app.get("/")
    def form() -> ResponseReturnValue:
        return web.page("form")

    @app.post("/exports")
    def request_export() -> ResponseReturnValue:
        try:
            body = web.ExportRequest.model_validate(request.get_json(force=True))
        except ValidationError as exc:
            return jsonify(detail=exc.errors(include_url=False, include_context=False)), 422
        job_id = str(uuid.uuid4())
        at = timestamp()
        try:
            publisher.publish(
                body.message(), exchange=settings.exchange, message_id=job_id, correlation_id=job_id
            )
        except LeveretError as exc:
            log.error("webapp.not_queued", error=str(exc))
            return jsonify(detail=f"the export could not be queued: {exc}"), 503
        try:
            publisher.publish(queued(job_id, at), routing_key=job_id)
        except Unroutable:
            log.warning("webapp.no_status_store", job_id=job_id)
        answer = web.links(job_id)
        return jsonify(answer), 202, {"Location": answer["status_url"]}

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> ResponseReturnValue:
        record = jobs.get(job_id)
        if record is None:
            abort(404)
        return jsonify(record), 200, {"Cache-Control": "no-store"}

    @app.get("/jobs/<job_id>/page")
    def job_page(job_id: str) -> ResponseReturnValue:
        return web.page("job")

    @app.get("/files/<name>")
    def download(name: str) -> ResponseReturnValue:
        path = web.export_file(settings.exports_dir, name)
        if path is None:
            abort(404)
        return send_file(path, mimetype="text/csv", as_attachment=True, download_name=name)

    return app
