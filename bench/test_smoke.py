"""Smoke test of the benchmark suite: ``run.py --quick --systems leveret,pika`` completes and
accounts for every message. No timing is asserted: figures on a shared machine are not a test.

    bench/.venv/bin/python -m pytest bench/test_smoke.py      # or: make bench-smoke

Needs the broker the suite uses (``BENCH_URL``, default amqp://guest:guest@127.0.0.1:5672/).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_accounts_for_every_message(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--systems",
            "leveret,pika",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lost / duplicated / left" in proc.stdout  # the table was printed
    data = json.loads(out.read_text())
    runs = data["runs"]
    scenarios = {
        "publish_1",
        "publish_8",
        "publish_batch",
        "publish_concurrent",
        "drain",
        "latency",
        "retry",
    }
    assert {(r["system"], r["scenario"]) for r in runs} == {
        (s, sc) for s in ("leveret", "pika") for sc in scenarios
    }
    for run in runs:
        res = run["result"]
        what = f"{run['system']} {run['scenario']}: {res}"
        if (run["system"], run["scenario"]) == ("pika", "publish_concurrent"):
            assert res["status"] == "n/a", what  # pika has no asyncio API
            continue
        assert res["status"] == "ok", what
        assert res["expected"] == run["n"] == 500, what
        assert res["lost"] == 0, what
        assert res.get("left", 0) == 0, what
        if run["scenario"] == "retry":
            assert res["failed_once"] == 500, what  # every message took the retry path once
