"""The dashboard's pages, each with a JSON twin: queues, dead letters, a message, a job.

Plus ``/metrics`` (every queue in Prometheus text) and ``/healthz``. Reading
needs nothing on loopback and the token beyond it (:meth:`Base._read`).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.responses import Response as HTTPResponse

from leveret import connection
from leveret.dashboard import letters, queues
from leveret.dashboard.base import Base
from leveret.dashboard.security import Identity
from leveret.dashboard.web import clean, int_param, letter_summary, wants_json
from leveret.errors import LeveretError
from leveret.metrics import CONTENT_TYPE as METRICS_TYPE
from leveret.metrics import render_queues
from leveret.topology import dead_letter_queue


class Pages(Base):
    """The read-only handlers."""

    async def overview(self, request: Request, who: Identity) -> HTTPResponse:
        view = await run_in_threadpool(
            queues.overview, self.settings.url, self.settings.topology, self.management
        )
        if wants_json(request):
            return JSONResponse(
                clean(
                    {
                        "broker": self.broker,
                        "source": view.source,
                        "note": view.note,
                        "groups": [
                            {
                                "work": asdict(g.work),
                                "tiers": [asdict(t) for t in g.tiers],
                                "dead": asdict(g.dead),
                            }
                            for g in view.groups
                        ],
                        "others": [asdict(r) for r in view.others],
                    }
                )
            )
        return self._page(request, who, "queues.html", view=view)

    async def metrics(self, request: Request) -> HTTPResponse:
        """Every queue's figures in Prometheus text (a scraper sends the token as a bearer)."""
        if not self.guard.may_read(self._who(request)):
            return PlainTextResponse("authentication required\n", 401)
        try:
            view = await run_in_threadpool(
                queues.overview, self.settings.url, self.settings.topology, self.management
            )
        except LeveretError as exc:
            return PlainTextResponse(connection.redact(str(exc)) + "\n", 502)
        rows = [row for g in view.groups for row in (g.work, *g.tiers, g.dead)] + view.others
        return HTTPResponse(render_queues(rows), media_type=METRICS_TYPE)

    async def healthz(self, request: Request) -> HTTPResponse:
        """The process answers (for a container's health check; no broker call)."""
        return PlainTextResponse("ok\n")

    async def dead_letters(self, request: Request, who: Identity) -> HTTPResponse:
        queue = self._queue(request)
        size = self.settings.page_size
        number = max(1, int_param(request.query_params.get("page"), 1))
        page = await run_in_threadpool(
            lambda: letters.browse(
                self.settings.url,
                queue,
                offset=(number - 1) * size,
                limit=size,
                reach=self.settings.reach,
            )
        )
        if wants_json(request):
            return JSONResponse(
                clean(
                    {
                        "queue": dead_letter_queue(queue),
                        "depth": page.depth,
                        "offset": page.offset,
                        "touched": page.touched,
                        "reach": page.reach,
                        "has_next": page.has_next,
                        "letters": [letter_summary(d) for d in page.letters],
                    }
                )
            )
        done = request.query_params.get("done", "")
        count = int_param(request.query_params.get("count"), 0)
        return self._page(
            request,
            who,
            "dlq.html",
            queue=queue,
            page=page,
            number=number,
            done=done if done in ("replay", "purge") else "",
            count=count,
        )

    async def message(self, request: Request, who: Identity) -> HTTPResponse:
        queue = self._queue(request)
        wanted = request.query_params.get("id", "")
        letter, touched = await run_in_threadpool(
            lambda: letters.find(self.settings.url, queue, wanted, reach=self.settings.reach)
        )
        if letter is None:
            text = f"no message {wanted!r} among the first {touched} of {queue}.dlq"
            if wants_json(request):
                return JSONResponse({"error": text}, 404)
            return self._page(request, who, "error.html", status=404, message=text)
        detail = {
            **letter_summary(letter),
            "headers": letters.plain(letter.headers),
            "traceback": letters.traceback_of(letter),
            "body": letters.pretty_body(letter.body),
        }
        if wants_json(request):
            return JSONResponse(clean(detail))
        headers_text = json.dumps(
            letters.plain(letter.headers), indent=2, ensure_ascii=False, sort_keys=True
        )
        return self._page(
            request, who, "message.html", queue=queue, letter=detail, headers_text=headers_text
        )

    async def job(self, request: Request, who: Identity) -> HTTPResponse:
        job_id = str(request.path_params.get("job_id") or request.query_params.get("id", ""))
        if self.store is None:
            text = "job lookup needs the status store: start with --status-db URL"
            if wants_json(request):
                return JSONResponse({"error": text}, 404)
            return self._page(request, who, "error.html", status=404, message=text)
        record = await run_in_threadpool(self.store.get, job_id) if job_id else None
        if wants_json(request):
            if record is None:
                return JSONResponse({"error": f"no job {job_id!r}"}, 404)
            return JSONResponse(clean(record))
        text = json.dumps(record, indent=2, ensure_ascii=False) if record else ""
        return self._page(
            request,
            who,
            "job.html",
            job_id=job_id,
            record=record,
            record_text=text,
            status=404 if job_id and record is None else 200,
        )
