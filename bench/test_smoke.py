"""Smoke test of the benchmark suite: a quick run of ``bench/run.py`` with small counts, through
the same driver and scenarios as a full run, that must account for every message by id.

    .venv/bin/python -m pytest -c bench/pytest.ini bench/test_smoke.py   # or: make bench-smoke

It runs the systems that need nothing beyond leveret's own dependencies: leveret, raw pika and
raw aio-pika, and the Go client when a ``go`` toolchain is installed (required with
``LEVERET_POLYGLOT=required``, as in CI). Dramatiq, Celery and FastStream are left to the full
run (``make bench``, in bench/.venv). No timing is asserted: figures of a 100-message run on a
shared machine are not a test. Needs the broker the suite uses (``BENCH_URL``, default
amqp://127.0.0.1:5672/). A second test checks, without the broker, how the
offered-load curve's points are reported.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.scenarios import SCENARIOS
from bench.systems import MODULES

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("leveret", "pika", "aiopika", "go")
MESSAGES = 100
GO_REQUIRED = os.environ.get("LEVERET_POLYGLOT") == "required"


def without_api(system: str) -> set[str]:
    """The scenarios a system has no API for: the driver reports them as "n/a"."""
    cls = importlib.import_module(MODULES[system]).System
    lacking = {
        "publish_batch": cls.batch_api is None,
        "publish_concurrent": cls.concurrent_api is None,
        "retry": cls.retry_api is None,
    }
    return {scenario for scenario, missing in lacking.items() if missing}


def test_quick_run_accounts_for_every_message(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--messages",
            str(MESSAGES),
            "--no-wait-quiet",
            "--systems",
            ",".join(SYSTEMS),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "lost / duplicated / left" in proc.stdout  # the table was printed
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert sorted((r["system"], r["scenario"]) for r in runs) == sorted(
        (s, sc) for s in SYSTEMS for sc in SCENARIOS
    )
    measured = 0
    for run in runs:
        res = run["result"]
        what = f"{run['system']} {run['scenario']}: {res}"
        if run["system"] == "go" and res.get("why"):  # no toolchain: every go run is n/a
            assert not GO_REQUIRED, f"{what} (LEVERET_POLYGLOT=required)"
            assert res["status"] == "n/a", what
            continue
        if run["scenario"] in without_api(run["system"]):
            assert res["status"] == "n/a", what
            continue
        assert res["status"] == "ok", what
        assert res["expected"] == run["n"] == MESSAGES, what
        assert res["lost"] == 0, what
        assert res["duplicates"] == 0, what
        assert res.get("left", 0) == 0, what
        if run["scenario"] == "retry":
            assert res["failed_once"] == MESSAGES, what  # every message took the retry path once
        measured += 1
    # leveret and raw pika are always measured in every scenario they have an API for.
    assert measured >= sum(len(SCENARIOS) - len(without_api(s)) for s in ("leveret", "pika"))


def test_the_load_curve_names_where_each_system_fell_behind() -> None:
    from bench import docs, report
    from bench.scenarios import scale

    load = scale.points(["leveret", "pika"], ["load"])
    assert {p["scenario"] for p in load} == {"latency"}
    assert {p["system"] for p in load} == {"leveret", "pika"}
    assert [p["x"] for p in load if p["system"] == "leveret"] == sorted(
        p["x"] for p in load if p["system"] == "leveret"
    )

    def point(
        system: str, rate: int, published: float, consumed: float, p50: float = 1.0
    ) -> dict[str, object]:
        return {
            "curve": "load",
            "scenario": "latency",
            "x": rate,
            "system": system,
            "n": 3 * rate,
            "params": {"rate": rate},
            "result": {
                "status": "ok",
                "p50_ms": p50,
                "p99_ms": 4.0 if consumed >= rate else 900.0,
                "offered_rate": rate,
                "achieved_rate": published,
                "consumer_rate": consumed,
            },
        }

    data = {
        "scale": [
            point("leveret", 1000, 1000, 1000),
            point("leveret", 2000, 1990, 1500),  # the consumer fell behind
            point("pika", 1000, 1000, 1000),
            point("pika", 2000, 1200, 1200),  # the publishers fell behind
            point("dramatiq", 1000, 1000, 1000),
            point("dramatiq", 2000, 2000, 1990, p50=50.0),  # a queue built up
        ]
    }
    noisy = {
        "scale": [
            point("pika", 1000, 1000, 1000),
            point("pika", 1500, 1500, 1500, p50=21.0),  # a queue built up, this once
            point("pika", 2000, 2000, 2000),
            point("pika", 2500, 2500, 2000),
        ]
    }
    assert docs.saturation(noisy) == [
        "Offered load: pika kept up to 1,000 msg/s (p99 4.0 ms) and fell behind at 1,500 (a "
        "queue built up, median 21 ms: published 1,500, consumed 1,500 msg/s), though it kept "
        "up again at 2,000."
    ]
    assert docs.saturation(data) == [
        "Offered load: leveret kept up to 1,000 msg/s (p99 4.0 ms) and fell behind at 2,000 "
        "(its consumer: published 1,990, consumed 1,500 msg/s); pika kept up to 1,000 msg/s "
        "(p99 4.0 ms) and fell behind at 2,000 (its publishers: published 1,200, consumed "
        "1,200 msg/s); dramatiq kept up to 1,000 msg/s (p99 4.0 ms) and fell behind at 2,000 "
        "(a queue built up, median 50 ms: published 2,000, consumed 1,990 msg/s)."
    ]
    table = report.scale_table(data)
    assert "| 1000 | 1.0 / 4.0 | 1.0 / 4.0 |" in table
    assert "1.0 / 900.0, fell behind: published 1,990, consumed 1,500 msg/s" in table


def test_latency_has_rounds_of_its_own() -> None:
    from bench import report, run

    full = run.parse_args(["--systems", "leveret,pika", "--scenarios", "drain,latency"])
    assert (full.rounds, full.latency_rounds) == (3, run.LATENCY_ROUNDS) == (3, 5)
    order = run.plan(full)
    assert order[:4] == [
        (1, "drain", "leveret"),
        (1, "drain", "pika"),
        (1, "latency", "leveret"),
        (1, "latency", "pika"),
    ]
    assert order[4:6] == [(2, "drain", "pika"), (2, "drain", "leveret")]  # one further on
    assert [r for r, scenario, _ in order if scenario == "drain"] == [1, 1, 2, 2, 3, 3]
    assert order[-4:] == [
        (4, "latency", "pika"),
        (4, "latency", "leveret"),
        (5, "latency", "leveret"),
        (5, "latency", "pika"),
    ]
    three = run.parse_args(["--systems", "leveret,pika,go", "--scenarios", "drain"])
    assert [s for _, _, s in run.plan(three)] == [
        *("leveret", "pika", "go"),
        *("pika", "go", "leveret"),
        *("go", "leveret", "pika"),
    ]
    assert report.rounds(vars(full)) == "3 interleaved rounds (5 of latency)"
    quick = run.parse_args(["--quick", "--scenarios", "latency"])
    assert (quick.rounds, quick.latency_rounds) == (1, 1)
    assert report.rounds({"rounds": 1, "latency_rounds": 1}) == "1 interleaved round"
    more = run.parse_args(["--rounds", "7"])
    assert more.latency_rounds == 7
