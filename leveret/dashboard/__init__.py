"""``leveret dashboard``: a web page over the queues, the dead letters and the jobs.

Install it with ``pip install "leveret[dashboard]"`` (Starlette, uvicorn and
Jinja2; the templates and the stylesheet ship in this package). Modules:

- :mod:`.queues`: the queue page's figures (AMQP, plus the management API).
- :mod:`.letters`: dead-letter pages and actions that read a bounded window.
- :mod:`.security`: tokens, sessions, CSRF and Origin/Host checks.
- :mod:`.server`: the Starlette application, its routes over
  :mod:`.pages` (reading, ``/metrics``) and :mod:`.actions` (replay, purge,
  login), with :mod:`.base` (what they share) and :mod:`.web` (request helpers,
  security headers).

See ``docs/dashboard.md`` for running it, the security model and the paging design.
"""

from leveret.dashboard.server import Settings, create_app

__all__ = ["Settings", "create_app"]
