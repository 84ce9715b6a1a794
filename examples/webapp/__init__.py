"""A complete example web app: a report export, queued, followed live, downloaded.

* :mod:`.tasks`: the ``reports.export`` message, its topology and the worker's
  tracked handler, which writes the CSV in chunks and reports its progress.
* :mod:`.fastapi_app`: the web app on FastAPI with the :class:`~leveret.AsyncPublisher`.
* :mod:`.flask_app`: the same flow on Flask with the thread-safe :class:`~leveret.Publisher`.
* :mod:`.stack`: everything in one process: both workers and the web server.

``python -m examples.webapp`` (or ``make example``) starts it; see ``docs/webapp.md``.
"""
