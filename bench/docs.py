"""docs/performance.md, rendered from a run's results by :func:`render`.

Every figure on the page comes from the results file; the prose around the findings is chosen
by the figures (a finding the figures no longer show is not printed). Edit this module, not
the page: ``bench/.venv/bin/python bench/run.py --render bench/results/last.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report


def _get(med: dict[Any, Any], scenario: str, field: str, system: str) -> float | None:
    v = med.get((scenario, field, system))
    return v if isinstance(v, float) else None


def _share(prof: dict[str, Any], *packages: str) -> float:
    return sum(prof.get("packages", {}).get(p, 0.0) for p in packages)


def _inclusive(prof: dict[str, Any], needle: str) -> float:
    rows = [*prof.get("leveret_inclusive", []), *prof.get("library_inclusive", [])]
    return max((v for k, v in rows if needle in k), default=0.0)


def findings(data: dict[str, Any]) -> list[str]:
    """Performance problems in leveret that the figures show, each with its evidence."""
    med = report.medians(data)
    prof = data.get("profile") or {}
    drain_prof = prof.get("drain") or {}
    retry_prof = prof.get("retry") or {}
    out = []

    one = _get(med, "publish_1", "msgs_per_s", "leveret")
    eight = _get(med, "publish_8", "msgs_per_s", "leveret")
    pika1 = _get(med, "publish_1", "msgs_per_s", "pika")
    pika8 = _get(med, "publish_8", "msgs_per_s", "pika")
    if one and eight and eight / one < 1.6:
        peer = (
            f" Raw pika, one connection per thread, goes from {pika1:,.0f} to {pika8:,.0f} ({pika8 / pika1:.1f}x)."
            if pika1 and pika8
            else ""
        )
        out.append(
            f"**`Publisher` serialises threads on the confirm round trip.** Eight threads sharing one "
            f"`Publisher` (what the README tells a Flask or Django app to do) publish {eight:,.0f} msg/s, "
            f"{eight / one:.2f}x one thread's {one:,.0f}.{peer} `Publisher.send` "
            "(`leveret/publisher/sync.py`) holds `self._lock` across `basic_publish` on a confirm-mode "
            "`BlockingChannel`, which returns only when the broker's `basic.ack` arrives, so every "
            "thread waits for every other thread's confirm: one publish in flight per process. "
            "Possible remedies, none applied here: a connection per thread (thread-local), or publish "
            "under the lock and wait for the confirm outside it (pika's BlockingChannel cannot, its "
            "`SelectConnection` can: the raw pika batch figure shows what pipelined confirms give)."
        )

    lev_b = _get(med, "publish_batch", "msgs_per_s", "leveret")
    aio_b = _get(med, "publish_batch", "msgs_per_s", "aiopika")
    pika_b = _get(med, "publish_batch", "msgs_per_s", "pika")
    if lev_b and pika_b and pika_b / lev_b > 2:
        aio = (
            f" and raw aio-pika with the same 1000 concurrent calls {aio_b:,.0f} ({aio_b / lev_b:.2f}x)"
            if aio_b
            else ""
        )
        out.append(
            f"**`AsyncPublisher` is bounded by aio-pika.** 1000 concurrent `publish()` calls reach "
            f"{lev_b:,.0f} msg/s{aio}, while pika's `SelectConnection` with 1000 unconfirmed messages "
            f"in flight reaches {pika_b:,.0f} ({pika_b / lev_b:.1f}x). What leveret adds on top of "
            "aio-pika (a pydantic model per message, the envelope, properties with a `datetime` "
            "timestamp, a `debug` log call filtered by level) is the difference to the aio-pika "
            "column; the rest is aio-pika/aiormq's per-publish cost (a future and a confirm "
            "waiter per message, pamqp marshalling in Python)."
        )

    if drain_prof and not drain_prof.get("error"):
        log_share = _inclusive(drain_prof, "report (leveret/")
        struct = _share(drain_prof, "structlog")
        jsonshare = _share(drain_prof, "json")
        amqp = _share(drain_prof, "pamqp", "aiormq")
        loop = _share(drain_prof, "asyncio")
        sock_write = sum(
            v for k, v in drain_prof.get("top_self", []) if "_SelectorSocketTransport.write" in k
        )
        lev_d = _get(med, "drain", "msgs_per_s", "leveret")
        aio_d = _get(med, "drain", "msgs_per_s", "aiopika")
        cmp_ = (
            f" (raw aio-pika, same client and prefetch, no validation and no log: {aio_d:,.0f} msg/s against leveret's {lev_d:,.0f})"
            if lev_d and aio_d
            else ""
        )
        out.append(
            f"**The worker is CPU-bound, and the log line is the largest cost leveret adds.** While "
            f"draining, the worker's event loop was idle in only {drain_prof['idle_share']:.0%} of "
            f"py-spy's samples{cmp_}. The one log line per message (`report` in "
            f"`leveret/consumers/delivery.py`, through structlog) is {log_share:.0%} of the busy "
            f"time: structlog's processors are {struct:.0%} self time and the stdlib `json` encoder "
            f"another {jsonshare:.0%}. `leveret.logs.configure` renders with "
            "`JSONRenderer()` on the standard library's `json.dumps` although orjson is already a "
            "dependency (`JSONRenderer(serializer=orjson.dumps)` with a bytes logger), stamps an "
            "ISO time with `TimeStamper`, runs `redact_urls` over every value of every line, and "
            "`PrintLogger` flushes each line with its own `write`. The per-message "
            "`bound_contextvars(...)` context manager adds and removes three context variables "
            "around each delivery. The rest is the AMQP client ("
            f"{amqp:.0%} in aiormq/pamqp frame parsing and marshalling) and asyncio itself "
            f"({loop:.0%}, of which {sock_write:.0%} in the socket transport's `write`: aiormq "
            "writes each `basic.ack` as its own frame and send call, as it does for raw aio-pika; "
            "plus a task per delivery from "
            "aiormq, and `asyncio.wait_for`, which on Python 3.11 wraps "
            "every async handler call in one more task to enforce the timeout; "
            "`asyncio.timeout()` would not create a task)."
        )

    lev_r = _get(med, "retry", "seconds", "leveret")
    aio_r = _get(med, "retry", "seconds", "aiopika")
    if retry_prof and not retry_prof.get("error"):
        tb = _share(retry_prof, "traceback", "ast", "linecache")
        fail = _inclusive(retry_prof, "failure (leveret/retry.py")
        cmp_ = (
            f" Raw aio-pika doing the same republish-confirm-ack by hand takes {aio_r:.2f} s for what takes leveret {lev_r:.2f} s."
            if lev_r and aio_r
            else ""
        )
        settle = _inclusive(retry_prof, "_settle (leveret/")
        headline = (
            "On the retry path, formatting the traceback costs more than the republish."
            if tb > settle
            else "On the retry path, formatting the traceback is a large share of the work."
        )
        out.append(
            f"**{headline}** "
            f"`retry.failure` (`leveret/retry.py`) is {fail:.0%} of the worker's busy time when "
            f"every message fails once, and {tb:.0%} is in `traceback`, `ast` and `linecache` "
            "alone (the republish and its confirm, `Worker._settle`, are "
            f"{settle:.0%}): `traceback.format_exception` on "
            "Python 3.11+ re-reads each frame's source line "
            "and parses it with `ast` to place the `^^^^` markers, for a header "
            "(`leveret-error-traceback`) that keeps only the last 4 KiB anyway. "
            "Writing only the file, line and function of each frame (from `traceback.walk_tb`, "
            "with no source line, hence no caret computation), or formatting only the innermost "
            "frames (`limit=-20`), would remove most of it." + cmp_
        )

    rss = _get(med, "drain", "rss_mib", "leveret")
    aio_rss = _get(med, "drain", "rss_mib", "aiopika")
    foot = drain_prof.get("import_footprint_mib") or {}
    if rss and aio_rss and foot.get("leveret"):
        libs = ", ".join(
            f"{k} {foot[k]:.1f}" for k in ("aio_pika", "pika", "pydantic", "structlog") if k in foot
        )
        out.append(
            f"**Memory is import-time.** The worker peaks at {rss:.1f} MiB "
            f"({rss * 2**20 / 1e6:.1f} MB), the bare aio-pika consumer at {aio_rss:.1f} MiB. A fresh "
            f"interpreter peaks at {foot.get('python alone', float('nan')):.1f} MiB, and at "
            f"{foot['leveret']:.1f} MiB after `import leveret` alone (each library alone, in MiB: "
            f"{libs}), so {foot['leveret'] / rss:.0%} of the worker's peak is imports, not messages. "
            "`leveret/__init__.py` imports both AMQP clients: pika comes in through "
            "`leveret.publisher.sync` and `leveret.connection`, although a worker only talks "
            "through aio-pika; a lazy import of the blocking publisher would save a worker pika's "
            "share."
        )
    return out


def saturated(data: dict[str, Any]) -> dict[str, float]:
    """Systems whose consumer processed below 95 % of the offered rate in some latency round."""
    out: dict[str, float] = {}
    rate = data["environment"].get("rate", 500)
    for run in data["runs"]:
        res = run["result"]
        if (
            run["scenario"] == "latency"
            and res.get("status") == "ok"
            and res.get("consumer_rate", rate) < 0.95 * rate
        ):
            out[run["system"]] = min(out.get(run["system"], rate), res["consumer_rate"])
    return out


def render(data: dict[str, Any], pngs: list[Path]) -> str:
    env = data["environment"]
    header, body = report.rows(data)
    acc = report.accounting(data)
    reruns = sum(a["reruns"] for a in acc.values())
    foreign = [r["result"].get("foreign_cpu", 0.0) for r in [*data["runs"], *data.get("scale", [])]]
    foreign_med = sorted(foreign)[len(foreign) // 2] if foreign else 0.0
    foreign_max = max(foreign, default=0.0)
    versions = env.get("versions", {})
    sizes = env.get("sizes", {})
    png_names = [p.name for p in pngs]
    L: list[str] = []
    w = L.append
    w("# Performance")
    w("")
    w(
        "leveret beside raw pika, raw aio-pika, Dramatiq, Celery and FastStream on the same local "
        "RabbitMQ, each with the guarantees leveret gives by default: persistent messages, a "
        "publisher confirm for every message, and an ack only after the handler returned. "
        "The suite is in `bench/` (`make bench`, about 15 minutes on 2 cores; `make bench-smoke`, a quick "
        "smoke test). **This page is generated** by `bench/run.py` from the results of the last full "
        "run (`bench/results/last.json`); edit `bench/docs.py`, not this file."
    )
    w("")
    w("## Results")
    w("")
    w(
        f"Medians of {env['rounds']} interleaved rounds (round 1 runs every system in turn for each "
        "scenario, then round 2 ...). In brackets, the system's figure divided by leveret's: above 1 "
        "is better than leveret for ↑ rows, worse for ↓ rows."
    )
    w("")
    w(report.md_table(header, body))
    w("")
    w(
        f"Messages per measurement: publish {sizes.get('publish_1'):,} (1 caller), "
        f"{sizes.get('publish_8'):,} (8 callers), {sizes.get('publish_batch'):,} (batch); drain "
        f"{sizes.get('drain'):,}; latency {sizes.get('latency'):,} at {env.get('rate', 500):g} msg/s; "
        f"retry {sizes.get('retry'):,}. Payloads are JSON objects of about 200 bytes. "
        '"lost / duplicated / left" adds up every measurement of the system, the scale curves '
        "included: ids never processed (or never read back after a publish run), ids processed "
        "more than once, and messages still in any of the system's queues after its consumer "
        "stopped."
    )
    behind = saturated(data)
    if behind:
        w("")
        w(
            f"At {env.get('rate', 500):g} msg/s, some consumers did not keep up in at least one round "
            "(their processing rate while the publisher ran on the same cores was below the offered "
            "rate), so their latency is mostly time spent queued: "
            + "; ".join(f"{s} (processed {r:,.0f} msg/s)" for s, r in behind.items())
            + "."
        )
    if "bench-summary.png" in png_names:
        w("")
        w("![medians per system](bench-summary.png)")
    w("")
    w("## leveret against its targets")
    w("")
    w(
        report.md_table(
            ["target", "measured (medians)", "verdict"], [list(t) for t in report.targets(data)]
        )
    )
    w("")
    w(
        "The retry figure is the wall time from the first attempt of the first message to the "
        "success of the last, every message failing once and being retried after the system's "
        '10 ms delay. "Fast" for concurrent publishing is read here as within 80 % of raw '
        "aio-pika's figure with the same API shape (1000 concurrent awaits on one confirm "
        "channel), the client `AsyncPublisher` is built on."
    )
    w("")
    w("## Performance problems found in leveret")
    w("")
    w(
        "Not fixed here (the benchmark does not change leveret); each is what the figures and the "
        "profiles below show."
    )
    w("")
    for i, f in enumerate(findings(data), 1):
        w(f"{i}. {f}")
    w("")
    w("## What each system runs with")
    w("")
    w(report.settings_table(data))
    w("")
    w(
        "- **Guarantees made equal**: Dramatiq gets `confirm_delivery=True` (off by default); "
        "Celery gets `task_acks_late=True` (it acks *before* running a task by default) and "
        "`broker_transport_options={'confirm_publish': True}` (off by default); FastStream gets "
        "`persist=True` on every publish and a durable queue (neither is its default). Everything "
        "else is each library's default."
    )
    w(
        "- **Queue type**: leveret declares quorum queues by default, and the raw pika and aio-pika "
        "baselines use quorum queues too, so that they are baselines for what leveret adds. "
        "Dramatiq, Celery and FastStream use classic durable queues, their defaults. The *queue "
        "type* scale curve below shows what that choice is worth on its own."
    )
    w(
        "- **Prefetch** is each system's default: leveret 8 (its concurrency), Dramatiq 16 (twice "
        "its threads), Celery 4 (4 x concurrency), FastStream unlimited; the hand-written pika and "
        "aio-pika consumers use 8, like leveret."
    )
    w(
        "- **Per-message work in the consumer**: leveret and FastStream validate every body with "
        "pydantic (leveret strictly, against the message's model); raw pika and aio-pika "
        "`json.loads` it; Dramatiq and Celery decode their JSON envelope. leveret writes one JSON "
        "log line per message (structlog, to a file) and FastStream its default two lines (to a "
        "file); Dramatiq, Celery and the raw consumers log nothing for a successful message at "
        "their default levels. Each handler then appends one line to a record file (the same "
        "`os.write` for every system), which is how messages are counted by id."
    )
    w(
        "- **One worker process**: Dramatiq runs `--processes 1` (its default would be one per "
        "core) and Celery `--concurrency 1` (its prefork pool: a main process that talks to the "
        "broker and one child that runs tasks); their RSS is the sum over both processes' VmHWM."
    )
    w(
        "- **Retry**: leveret republishes to its retry exchange (tier queue with a 10 ms TTL), "
        "waits for the confirm, then acks; the raw clients do the same by hand with one TTL queue; "
        "Dramatiq (`min_backoff=10`) and Celery (`countdown=0.01`) publish a delayed copy that the "
        "worker holds in memory until it is due. FastStream has no delayed retry."
    )
    w("")
    w("## How it is measured")
    w("")
    w(
        "- Every measurement runs in a fresh driver process (`bench/driver.py`), which declares "
        "queues with names unique to the measurement, runs the scenario and deletes every queue "
        "and exchange afterwards. Consumers are processes of their own, started the way a user "
        "would (the `dramatiq` and `celery` CLIs; `python -m bench.systems.<name>` for the others; "
        "leveret's is the same `Worker` setup as `leveret worker`)."
    )
    w(
        "- **Publish**: connections are opened and one warm-up message sent per caller before the "
        "clock starts; callers are threads for blocking APIs and asyncio tasks for asyncio ones. "
        "Afterwards every message is read back from the queue and counted by id."
    )
    w(
        "- **Drain**: N messages are published first (untimed; Dramatiq and Celery without confirms, "
        "then the queue depth is checked), then the consumer starts; the time runs from the first "
        "handler's start to the last handler's end, so start-up is not counted. Peak RSS is the "
        "consumer's VmHWM from `/proc/PID/status` (summed over its child processes) at the end "
        "of the drain."
    )
    w(
        f"- **Latency**: with the consumer running and warmed up, messages are published on a fixed "
        f"schedule of {env.get('rate', 500):g} msg/s (blocking APIs from 4 pacing threads, asyncio "
        "APIs one task per message), each stamped with `time.time()` just before its publish call; "
        "latency is the handler's start minus that stamp."
    )
    w(
        "- **Disturbances**: this machine and its broker are shared with other work (the "
        "repository's test suite closes every connection with `rabbitmqctl "
        "close_all_connections` and `stop_app`, and its cluster test starts three more RabbitMQ "
        "nodes). An idle sentinel connection is held through each measurement, and the CPU "
        "time used by other programs (the machine's busy time minus the benchmark's processes "
        "and the broker's) is measured across it. Before a measurement the run waits for a "
        f"quiet machine (it waited {env.get('quiet_wait_s', 0):.0f} s in all); a measurement "
        "that failed, lost the sentinel or shared the CPU with more than 0.3 core of other "
        f"work is run again, at most 3 attempts. Reruns in this run: {reruns}; CPU used by "
        f"other programs during the kept measurements: median {foreign_med:.2f} core, "
        f"highest {foreign_max:.2f}."
    )
    w("")
    w("## Scale curves")
    w("")
    if data.get("scale"):
        w(
            "Drain throughput (one round each, not medians) with one setting changed; the other "
            "settings are those of the table above."
        )
        w("")
        if "bench-scale.png" in png_names:
            w("![scale curves](bench-scale.png)")
            w("")
        w(report.scale_table(data))
    else:
        w("_Not run in the last run (`--no-scale`)._")
    w("")
    w("## Where a leveret worker spends its time")
    w("")
    prof = data.get("profile") or {}
    for mode, title in (
        ("drain", "Draining (every message succeeds)"),
        ("retry", "The retry path (every message fails once)"),
    ):
        w(f"### {title}")
        w("")
        w(report.profile_section(prof.get(mode)))
        w("")
    w("## The machine and the run")
    w("")
    w(
        f"- When: {env.get('started')}, {env.get('seconds', 0) // 60} min {env.get('seconds', 0) % 60} s"
    )
    w(
        f"- Machine: {env.get('nproc')} cores ({env.get('cpu')}), {env.get('mem_gib')} GiB RAM, "
        f"Linux {env.get('kernel')}; load average {env.get('load_before', [0])[0]:.2f} before the "
        f"run, {env.get('load_after', [0])[0]:.2f} after (the machine is shared)"
    )
    w(f"- RabbitMQ {env.get('rabbitmq')} ({env.get('erlang')}), single node, on 127.0.0.1")
    w(f"- Python {env.get('python')}; leveret at commit {env.get('leveret_commit')}")
    w("- Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    w(
        f"- Command: `make bench`, i.e. `{env.get('command').strip()}` in `bench/.venv` "
        "(`python3 -m venv bench/.venv; pip install -e . -r bench/requirements.txt`)"
    )
    w("")
    w("Other commands:")
    w("")
    w("```sh")
    w(
        "make bench-smoke                                   # quick run of leveret and raw pika, checked"
    )
    w("bench/.venv/bin/python bench/run.py --quick        # all systems, 500 messages, 1 round")
    w("bench/.venv/bin/python bench/run.py --systems leveret,dramatiq --scenarios drain,retry")
    w("bench/.venv/bin/python -m bench.profile --mode retry  # py-spy profile of a leveret worker")
    w("bench/.venv/bin/python bench/run.py --render bench/results/last.json  # rewrite this page")
    w("```")
    w("")
    return "\n".join(L)
