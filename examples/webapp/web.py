"""What the FastAPI and the Flask app share: the request's shape, the pages, the files."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from examples.webapp.tasks import ExportRequested

PAGES = Path(__file__).with_name("pages")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\.csv$")


class ExportRequest(BaseModel):
    """The body of ``POST /exports``: what the form sends, as JSON."""

    rows: int = Field(default=10_000, ge=1, le=1_000_000)
    email: str = Field(default="you@example.com", min_length=3, max_length=254)
    fail: bool = False

    def message(self) -> ExportRequested:
        """The task to publish."""
        return ExportRequested(rows=self.rows, email=self.email, fail=self.fail)


def links(job_id: str) -> dict[str, str]:
    """The 202 answer's body: the job id and where to follow it."""
    return {
        "job_id": job_id,
        "status_url": f"/jobs/{job_id}",
        "page_url": f"/jobs/{job_id}/page",
    }


def page(name: str) -> str:
    """A page's HTML (``form`` or ``job``): static, its script inline, nothing from the internet."""
    return (PAGES / f"{name}.html").read_text("utf-8")


def export_file(exports_dir: Path, name: str) -> Path | None:
    """The finished export called ``name``, or None.

    Only plain ``*.csv`` names directly in the exports folder: no separators,
    no ``..``, no hidden files (the partial ones are hidden).
    """
    if not _FILE_NAME.fullmatch(name):
        return None
    root = exports_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path
