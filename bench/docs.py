"""docs/performance.md, rendered from a run's results by :func:`render`.

Every figure on the page comes from the results file; the prose around the findings is chosen
by the figures (a finding the figures no longer show is not printed). Edit this module, not
the page: ``bench/.venv/bin/python bench/run.py --render bench/results/last.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.scenarios import latency, scale
from bench.systems import ALL


def _get(med: dict[Any, Any], scenario: str, field: str, system: str) -> float | None:
    v = med.get((scenario, field, system))
    return v if isinstance(v, float) else None


def _share(prof: dict[str, Any], *packages: str) -> float:
    return sum(prof.get("packages", {}).get(p, 0.0) for p in packages)


def _inclusive(prof: dict[str, Any], needle: str) -> float:
    rows = [*prof.get("leveret_inclusive", []), *prof.get("library_inclusive", [])]
    return max((v for k, v in rows if needle in k), default=0.0)


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "not measured"


def fixed(data: dict[str, Any]) -> list[str]:
    """What changed in leveret since the first run of this suite, with today's evidence."""
    med = report.medians(data)
    prof = data.get("profile") or {}
    drain_prof = prof.get("drain") or {}
    retry_prof = prof.get("retry") or {}
    out = []

    busy = drain_prof.get("busy_us_per_message")
    lev_d = _get(med, "drain", "msgs_per_s", "leveret")
    pika_d = _get(med, "drain", "msgs_per_s", "pika")
    conc = _get(med, "publish_concurrent", "msgs_per_s", "leveret")
    aio_c = _get(med, "publish_concurrent", "msgs_per_s", "aiopika")
    go_b = _get(med, "publish_batch", "msgs_per_s", "go")
    client = _share(drain_prof, "leveret.amqp") if drain_prof else None
    client_text = (
        f" Under the profiler the client is now {client:.0%} of the worker's busy time "
        "(aiormq and pamqp were 35% of it, and asyncio 30%, in the last full run on aiormq)."
        if client is not None and busy
        else ""
    )
    out.append(
        "**The worker and `AsyncPublisher` talk AMQP through a client of leveret's own** "
        "(`leveret/amqp/`), where aio-pika and aiormq were. The profiles of the earlier runs "
        "put two thirds of the worker's busy time in aiormq, pamqp and asyncio: a reader task "
        "and a queue per channel, a task per delivery before leveret's own, and pamqp decoding "
        "every frame field by field. The new client is an `asyncio.Protocol`: "
        "`data_received` cuts the bytes into frames and hands a finished delivery to the "
        "worker's callback in the same pass of the event loop; the frames of the hot path "
        "(deliver, content header, body, ack, reject, publish, confirms) are read and written "
        "with `struct`, and only the rare methods (handshake, declares, closes) go through "
        "pamqp. Frames written in one pass (the acks of deliveries that finished together, the "
        "publishes of many tasks) leave in one `write`. It keeps what the worker relied on: "
        "publisher confirms with returns for mandatory publishes, heartbeats both ways (two "
        "silent intervals close the connection), a channel closed by the broker failing only "
        "what waited on it, and a consumer cancelled by the broker ending its channel so the "
        "worker starts over (`tests/test_amqp.py` checks each against the broker, and its "
        "frames against pamqp's). A drain went from 4,737 msg/s in the last full run on aiormq to "
        f"{lev_d or float('nan'):,.0f} here ({_ratio(lev_d, pika_d)} raw pika's), and 1000 "
        f"concurrent `AsyncPublisher.publish` calls from 7,047 to {conc or float('nan'):,.0f} "
        f"msg/s ({_ratio(conc, go_b)} the Go client's pipelined confirms; raw aio-pika "
        f"{aio_c or float('nan'):,.0f})." + client_text
    )
    log_share = _inclusive(drain_prof, "report (leveret/") if drain_prof else 0.0
    busy_text = (
        f" The worker's busy loop time per message, under the profiler, is now about {busy:.0f} µs "
        f"(234 µs in the first run after this fix), and `report`, the "
        f"log line, {log_share:.0%} of it (25% before)."
        if busy
        else ""
    )
    out.append(
        "**The log line costs a fraction of what it did.** `leveret.logs.configure` renders JSON "
        "with orjson straight to bytes (one line, newline included) and writes each line with one "
        "`os.write` (`LineWriter`, no text layer and no flush call); the timestamp formats its "
        "date and time once per second (`UtcStamper`, the same ISO text as before); `redact_urls` "
        "still runs over every value but only a string containing `://` goes through the regular "
        "expression. The line keeps its keys (event, outcome, type, version, duration_ms, "
        "message_id, queue, attempt, level, timestamp). The delivery's context is bound once in "
        "the delivery's own task (the worker runs each delivery in a task of its own, so nothing "
        "needs unbinding)." + busy_text
    )

    tb = _share(retry_prof, "traceback", "ast", "linecache") if retry_prof else None
    fail = _inclusive(retry_prof, "failure (leveret/retry.py") if retry_prof else None
    lev_r = _get(med, "retry", "seconds", "leveret")
    dram_r = _get(med, "retry", "seconds", "dramatiq")
    tb_text = (
        f" `retry.failure` is now {fail:.0%} of the busy time on the retry path (28% before), "
        f"`traceback`, `ast` and `linecache` {tb:.1%} (23% before)."
        if fail is not None and tb is not None
        else ""
    )
    out.append(
        "**The traceback header is cheap.** `retry.format_traceback` walks the frames "
        '(`traceback.walk_tb`) and writes `File "...", line N, in f` with the source line as '
        "`linecache` already holds it, the innermost 40 frames of each exception and up to three "
        "chained causes, then `Type: message`; no `ast` parse and no `^^^^` markers. The "
        "header is still cut to its last 4096 bytes behind a leading `…[truncated]`, as "
        "docs/contract.md says." + tb_text + f" The retry run takes {lev_r or float('nan'):.2f} s "
        f"against Dramatiq's {dram_r or float('nan'):.2f} s ({_ratio(lev_r, dram_r)})."
    )

    out.append(
        "**The worker's hot path does less per delivery.** A handler's timeout is "
        "`asyncio.timeout` (no extra task per call, as `asyncio.wait_for` made on Python 3.11); "
        "acks go through `Acks` (`leveret/consumers/delivery.py`), which writes them without "
        "waiting for a drain and, when several deliveries settle in the same pass of the event "
        "loop, as one `basic.ack multiple=True` up to the highest tag below every delivery still "
        "in a handler (rejects and acks are written in the order they are decided, so a multiple "
        "ack never covers a tag that is not ours to ack). A worker no longer imports pika: "
        "`leveret.Publisher` has a client of its own (below), `leveret.connection` imports pika inside "
        "`connect`, and the worker's topology check comes from `leveret.topology.worker_needs` "
        "rather than `leveret.admin`. Nor does the `leveret worker` command: the CLI imports a "
        "command's module when that command runs (`leveret/cli/lazy.py`), and the demo app "
        "imports `leveret.admin` and `leveret.dlq` only to run the demo (the idle worker's memory "
        "below). `leveret worker` puts the heap it loaded at start out of the garbage "
        "collector's sight (`gc.freeze`, `leveret.consumers.worker.freeze_heap`): a full "
        "collection walked the app and its modules for 10-20 ms, and no delivery was read "
        "meanwhile. The metrics of a settled delivery look their labelled children up once per "
        "queue, type and outcome (7.3 to 3 µs). A body is validated straight from its JSON: "
        "`Message` has an `__init__` of its own (it renames pydantic's error), and pydantic "
        "handed it every body parsed into keywords, to validate again as Python objects (about "
        "4 µs for the benchmark's message, 2 µs now); that also refused the JSON form of a "
        "`datetime` or `UUID` field, which strict Python validation does not take. The default "
        "prefetch stays equal to the "
        "concurrency (8): "
        "a higher one (the prefetch curve below) drains faster but lets one worker hold messages "
        "that another idle worker could run, and docs/contract.md states 8."
    )

    one = _get(med, "publish_1", "msgs_per_s", "leveret")
    eight = _get(med, "publish_8", "msgs_per_s", "leveret")
    pika1 = _get(med, "publish_1", "msgs_per_s", "pika")
    batch = _get(med, "publish_batch", "msgs_per_s", "leveret")
    go_b = _get(med, "publish_batch", "msgs_per_s", "go")
    eight_text = (
        f" Eight threads sharing one `Publisher` now publish {eight:,.0f} msg/s, "
        f"{eight / one:.1f}x one thread's {one:,.0f} (0.85x before)."
        if one and eight
        else ""
    )
    out.append(
        "**`Publisher` talks AMQP through leveret's own blocking confirm channel, and pipelines "
        "the confirms of concurrent threads.** The sync face drove a pika `SelectConnection`; "
        "it now writes the frames of `leveret.amqp.codec`, as the asyncio face does, on a plain "
        "socket (`leveret/amqp/blocking.py`): a publish is encoded once into one buffer and a "
        "write sends as many publishes as are waiting. There is no I/O thread between a caller "
        "and the socket: one thread at a time pumps the connection (a lone caller does its own "
        "I/O, as a `BlockingConnection` would), settles everyone's confirms as they come and "
        "hands the connection over when its own are in; a thread that publishes while another "
        "pumps wakes it through a socket pair. A daemon thread keeps heartbeats going while "
        "nobody publishes. A channel closed over one message (a missing exchange, say) fails "
        "that message and sends the others in flight again on a new channel; a refused login "
        "or vhost is named as such when a publish gives up (`tests/test_amqp_blocking.py` and "
        "`tests/test_publisher.py`). Outside the broker, a single publish went from about 510 "
        "to 190 µs of CPU (raw pika's `BlockingConnection`: about 280), message ids and trace "
        "ids come from `random` instead of a system call each (4.4 to 1.1 µs an id), and "
        "`publish_many` writes every 64 encoded publishes so the broker starts on a batch while "
        "the rest are encoded." + eight_text + " `Publisher.publish_many` and "
        "`AsyncPublisher.publish_many` send a whole batch, then wait for every confirm: "
        f"{batch or float('nan'):,.0f} msg/s for the sync one here, "
        f"{_ratio(batch, go_b)} the Go client with 1000 confirms in flight. A single `publish` "
        f"from one thread: {one or float('nan'):,.0f} msg/s against raw pika's "
        f"{pika1 or float('nan'):,.0f} ({_ratio(one, pika1)})."
    )
    return out


IDLE_WORKER = [
    [
        "before (commit 438dd6f): `leveret.cli` imported every command's module (`dlq`, "
        "`topology`, `outbox`, `dashboard`, `schemas`), and the demo app `leveret.admin` and "
        "`leveret.dlq`",
        "47.5 MiB",
        "yes",
    ],
    [
        "after (commit 37e4c66): a command's module is imported when the command runs, and the "
        "demo app imports `admin` and `dlq` only to run the demo",
        "44.6 MiB",
        "no",
    ],
    [
        "after (commit 3b2e3bc): the worker talks AMQP through `leveret.amqp`, not aio-pika, "
        "aiormq and yarl",
        "41.6 MiB",
        "no",
    ],
]
"""``bench/worker_rss.py``'s figures, measured by hand before and after the CLI loaded its
command modules lazily, and after the worker's AMQP client changed; they are not in the
results file."""


def idle_worker() -> list[str]:
    """The section on an idle ``leveret worker``'s memory."""
    return [
        "The RSS in the tables above is the benchmark's consumer: the library's `Worker`, started "
        "without the command line. A `leveret worker` process has the CLI too. "
        "`bench/worker_rss.py` starts `leveret worker` on the demo app (`leveret.demo:app`, its "
        "default) in a vhost of its own, lets it idle 3 s on the empty queue and reads its VmHWM "
        "from `/proc/PID/status`, five workers one after another; one more under "
        "`python -X importtime` lists what it imported. These figures were measured by hand on "
        "the machine below (Python 3.11.7), before and after each change, and are not part of "
        "the results file:",
        "",
        "```sh",
        ".venv/bin/python -m bench.worker_rss    # median VmHWM of 5 idle workers, and their imports",
        "```",
        "",
        report.md_table(
            ["`leveret worker leveret.demo:app`, idle", "VmHWM, median of 5", "pika imported"],
            IDLE_WORKER,
        ),
        "",
        "SQLAlchemy and Starlette were not imported before either: the outbox and dashboard "
        "commands import them when they run. What the worker still imports, by import time: "
        "pydantic, structlog, click, prometheus-client and pamqp (which `leveret.amqp` uses for "
        "the rare methods). `tests/test_cli.py` checks that `leveret worker` imports no pika, SQLAlchemy or "
        "Starlette, and none of the other commands' modules.",
    ]


def findings(data: dict[str, Any]) -> list[str]:
    """Performance problems in leveret that the figures still show, each with its evidence."""
    med = report.medians(data)
    prof = data.get("profile") or {}
    drain_prof = prof.get("drain") or {}
    out = []

    conc = _get(med, "publish_concurrent", "msgs_per_s", "leveret")
    go_b = _get(med, "publish_batch", "msgs_per_s", "go")
    if conc and go_b and conc / go_b < 0.5:
        out.append(
            f"**1000 concurrent `AsyncPublisher.publish` calls stay below half the Go client.** "
            f"They reach {conc:,.0f} msg/s, {_ratio(conc, go_b)} the Go client's {go_b:,.0f} "
            "(target: 0.5x). Each call builds and checks its envelope (a pydantic dump, a "
            "UUID, a traceparent) and awaits its own confirm future in a task of its own; the "
            "frames themselves are written in one `write` per pass of the loop."
        )

    lev_d = _get(med, "drain", "msgs_per_s", "leveret")
    pika_d = _get(med, "drain", "msgs_per_s", "pika")
    go_d = _get(med, "drain", "msgs_per_s", "go")
    dram_d = _get(med, "drain", "msgs_per_s", "dramatiq")
    short = [
        name
        for name, peer, want in (
            ("raw pika", pika_d, 1.0),
            ("the Go client", go_d, 0.6),
            ("Dramatiq", dram_d, 1.2),
        )
        if lev_d and peer and lev_d / peer < want
    ]
    if short and drain_prof and not drain_prof.get("error"):
        amqp = _share(drain_prof, "leveret.amqp")
        loop = _share(drain_prof, "asyncio")
        struct = _share(drain_prof, "structlog")
        write = sum(v for k, v in drain_prof.get("top_self", []) if "LineWriter.msg" in k)
        rounds = ", ".join(f"{r:.2f}x" for r in _round_ratios(data, "drain", "pika"))
        out.append(
            f"**The worker still drains below {_names(short)}.** leveret {lev_d:,.0f} msg/s; "
            f"raw pika {pika_d or float('nan'):,.0f} ({_ratio(lev_d, pika_d)}; round by round "
            f"{rounds}), the Go client "
            f"{go_d or float('nan'):,.0f} ({_ratio(lev_d, go_d)}), Dramatiq "
            f"{dram_d or float('nan'):,.0f} ({_ratio(lev_d, dram_d)}). Of the worker's busy "
            f"time, its AMQP client (`leveret.amqp`) is {amqp:.0%} and asyncio {loop:.0%}. The "
            "raw consumers validate nothing and log nothing; leveret validates each body with "
            f"pydantic and writes a log line (structlog {struct:.0%}, the `os.write` of the "
            f"line {write:.0%}), and runs each delivery in a task of its own."
        )

    p99 = _get(med, "latency", "p99_ms", "leveret")
    pika99 = _get(med, "latency", "p99_ms", "pika")
    if p99 and pika99 and p99 > pika99:
        mine = _rounds(data, "latency", "leveret", "p99_ms")
        theirs = _rounds(data, "latency", "pika", "p99_ms")
        out.append(
            f"**p99 latency at {data['environment'].get('rate', 500):g} msg/s is above raw "
            f"pika's** ({p99:.1f} ms against {pika99:.1f}, {_ratio(p99, pika99)}; round by "
            f"round, leveret {' / '.join(f'{v:.1f}' for v in mine)} ms and raw pika "
            f"{' / '.join(f'{v:.1f}' for v in theirs)}). The tail is spent before the worker "
            "reads a delivery: with the worker stamping each read of its socket (by hand, on "
            "this machine), the 50 slowest of 5,000 deliveries, 9 to 16 ms end to end, had "
            "spent 0.3 to 0.9 ms between that read and the handler's first line; the rest went "
            "on the publish, the quorum queue's write to its log (before it confirms or "
            "delivers) and the delivery, which the broker's disk moves more than either client, "
            "so the p99 of either system moves by a millisecond or more from one round to the "
            "next. A run of the latency scenario alone, leveret and raw pika in ten rounds "
            "(`bench/.venv/bin/python bench/run.py --systems leveret,pika --scenarios latency "
            "--rounds 10 --no-scale --no-profile --no-doc`), put leveret's p99 below raw pika's "
            "in 4 rounds of 10 (medians 5.4 and 6.0 ms; the median of the rounds' ratios "
            "1.10x) and its median above in 9 of 10, by 0.16 ms. What leveret adds shows in the median, and it is the worker's, not the "
            "publisher's: raw pika's consumer on leveret's queue had the same median fed by "
            "leveret's shared `Publisher` (four threads on one connection), by a `Publisher` "
            "per thread or by raw pika's publishers (0.97, 1.01 and 0.96 ms, medians of four "
            "interleaved runs). Inside the worker, about 200 µs pass from the delivery's bytes to the "
            "handler's first line at that rate (stamped by hand), spread over reading the frames, "
            "the delivery's task, its record, log and trace context, validation and the "
            "handler's timeout, with no step far above the others; each costs several times what "
            "it does in a busy drain, since the process sleeps between messages and starts each "
            "one cold." + _paced(prof)
        )

    batch = _get(med, "publish_batch", "msgs_per_s", "leveret")
    if batch and go_b and batch / go_b < 0.5:
        out.append(
            f"**`Publisher.publish_many` stays below half the Go client.** It reaches "
            f"{batch:,.0f} msg/s, {_ratio(batch, go_b)} the Go client's {go_b:,.0f} (target: "
            "0.5x). `publish_many` checks every message before it sends any (as its docstring "
            "says), so building the envelopes (a pydantic dump, an id, a traceparent: about 20 µs a "
            "message here) comes before the first frame leaves; the sending itself, measured "
            "apart, runs at the broker's pace (about 50 µs a message on this machine, of which "
            "15 to 20 µs of leveret's CPU). The Go client's own figure moves by a quarter from "
            "one run to the next on this machine."
        )

    one = _get(med, "publish_1", "msgs_per_s", "leveret")
    pika1 = _get(med, "publish_1", "msgs_per_s", "pika")
    if one and pika1 and one < pika1:
        rounds = ", ".join(f"{r:.2f}x" for r in _round_ratios(data, "publish_1", "pika"))
        out.append(
            f"**A single `publish` is {_ratio(one, pika1)} raw pika's**, about "
            f"{(1 / one - 1 / pika1) * 1e6:.0f} µs more per message (round by round: "
            f"{rounds}). Both wait for one broker round trip per message; outside the broker "
            "leveret's publish uses less CPU than raw pika's (about 190 against 280 µs, "
            "envelope included), so what is left is the broker's round trip, which moves "
            "from one round to the next on this shared machine more than the two differ."
        )
    return out


def saturation(data: dict[str, Any]) -> list[str]:
    """Per system of the offered-load curve: the highest rate it kept up with, and the first it
    did not."""
    pts = [
        p
        for p in data.get("scale", [])
        if p["curve"] == "load" and p["result"].get("status") == "ok"
    ]
    if not pts:
        return []
    parts = []
    for system in [s for s in ALL if any(p["system"] == s for p in pts)]:
        mine = sorted((p for p in pts if p["system"] == system), key=lambda p: p["x"])
        fell = next((p for p in mine if not scale.kept_up(p["result"])), None)
        below = [p for p in mine if fell is None or p["x"] < fell["x"]]
        kept = [p for p in below if scale.kept_up(p["result"])]
        # A higher rate kept up with after the first that fell behind (a noisy point) is
        # named, not taken for the system's limit.
        again = [p for p in mine if fell and p["x"] > fell["x"] and scale.kept_up(p["result"])]
        text = (
            f"{system} kept up to {kept[-1]['x']:,} msg/s"
            if kept
            else f"{system} kept up with none"
        )
        if kept:
            res = kept[-1]["result"]
            text += f" (p99 {res['p99_ms']:.1f} ms)"
        if fell is not None:
            res = fell["result"]
            who = (
                "its publishers"
                if res["achieved_rate"] < scale.KEPT_UP * res["offered_rate"]
                else "its consumer"
                if res["consumer_rate"] < scale.KEPT_UP * res["offered_rate"]
                else f"a queue built up, median {res['p50_ms']:,.0f} ms"
            )
            text += (
                f" and fell behind at {fell['x']:,} ({who}: published "
                f"{res['achieved_rate']:,.0f}, consumed {res['consumer_rate']:,.0f} msg/s)"
            )
            if again:
                rates = _names([f"{p['x']:,}" for p in again])
                text += f", though it kept up again at {rates}"
        else:
            text += ", the highest rate offered"
        parts.append(text)
    return [f"Offered load: {'; '.join(parts)}."]


def raw_ahead(data: dict[str, Any]) -> list[str]:
    """Where a raw client still beats leveret in this run, though no target covers it."""
    med = report.medians(data)
    busy = ((data.get("profile") or {}).get("drain") or {}).get("busy_us_per_message")
    out = []

    curve = {
        (r["x"], r["system"]): r["result"]["msgs_per_s"]
        for r in data.get("scale", [])
        if r["curve"] == "prefetch" and r["result"].get("msgs_per_s")
    }
    high = [
        (x, curve[(x, "leveret")], curve[(x, "pika")])
        for x in sorted({x for x, _ in curve})
        if x >= 100 and (x, "leveret") in curve and (x, "pika") in curve
    ]
    if high and any(pika > lev for _x, lev, pika in high):
        points = "; ".join(
            f"prefetch {x:,}: leveret {lev:,.0f} msg/s, raw pika {pika:,.0f} "
            f"({_ratio(pika, lev)} leveret's)"
            for x, lev, pika in high
        )
        cost = (
            f" (about {busy:.0f} µs of busy loop time a message under the profiler)" if busy else ""
        )
        out.append(
            f"**With a prefetch of 100 or more, raw pika drains faster** ({points}; the "
            "prefetch curve below). At a prefetch of 8 the broker's round trips set the pace of "
            "both; with more in flight the consumer's own CPU does, and a leveret delivery costs "
            f"more of it{cost}: strict validation, a log line, a task of its own under a timeout, "
            "metrics and a trace context, where the raw consumer `json.loads` the body and acks. "
            "The default prefetch stays at the concurrency (8), so that one worker does not hold "
            "messages another could run; `leveret worker --prefetch` raises it."
        )

    eight = _get(med, "publish_8", "msgs_per_s", "leveret")
    pika8 = _get(med, "publish_8", "msgs_per_s", "pika")
    if eight and pika8 and pika8 > eight:
        out.append(
            f"**Eight threads publish faster with raw pika** ({pika8:,.0f} against {eight:,.0f} "
            f"msg/s, {_ratio(pika8, eight)} leveret's). The raw pika threads hold a connection "
            "each, so the broker takes their publishes in eight channel processes side by side; "
            "leveret's eight threads share one `Publisher`: one connection and one channel, "
            "whose confirms are pipelined but pass through one channel process. A process that "
            "wants more can give each thread a `Publisher` of its own."
        )

    batch = _get(med, "publish_batch", "msgs_per_s", "leveret")
    pika_b = _get(med, "publish_batch", "msgs_per_s", "pika")
    if batch and pika_b and pika_b > batch:
        out.append(
            f"**Raw pika's batch is faster than `Publisher.publish_many`** ({pika_b:,.0f} against "
            f"{batch:,.0f} msg/s, {_ratio(pika_b, batch)} leveret's). The raw batch `json.dumps` "
            "a dict and publishes it with the same properties every time; `publish_many` "
            "dumps each message with pydantic and builds its envelope (an id, a timestamp, a "
            "traceparent) before it sends any, as its docstring promises."
        )
    return out


def _round_count(env: dict[str, Any]) -> str:
    n, latency = env["rounds"], env.get("latency_rounds", env["rounds"])
    rounds = f"{n} interleaved rounds"
    return rounds if latency == n else f"{rounds}, {latency} for the latency scenario"


def _order(env: dict[str, Any]) -> str:
    if not env.get("rotated"):
        return ""
    return ", each round starting one system further on than the round before"


def _paced(prof: dict[str, Any]) -> str:
    paced, drain = prof.get("paced") or {}, prof.get("drain") or {}
    if not paced.get("busy_us_per_message") or not drain.get("busy_us_per_message"):
        return ""
    busy, busy_drain = paced["busy_us_per_message"], drain["busy_us_per_message"]
    ack = sum(v for k, v in paced.get("top_self", []) if "_SelectorSocketTransport.write" in k)
    return (
        f" The profile at that pace (below) shows the same: the worker's loop is busy about "
        f"{busy:.0f} µs a message, {busy / busy_drain:.1f}x the {busy_drain:.0f} µs of a drain; "
        f"reading the frames is {_inclusive(paced, 'Connection.data_received'):.0%} of it, the "
        f"attempt (validation, trace context, the handler under its timeout) "
        f"{_inclusive(paced, 'attempt (leveret/consumers/attempt.py'):.0%}, the log line "
        f"{_inclusive(paced, 'report (leveret/'):.0%}, and the one write of each ack "
        f"{ack:.0%} (on loopback the kernel hands the bytes to the broker within that "
        "call; raw pika writes the same ack)."
    )


def _extra_rounds(env: dict[str, Any]) -> str:
    if env.get("latency_rounds", env["rounds"]) <= env["rounds"]:
        return ""
    return (
        "; the rounds past the others run the latency scenario alone, since its p99 is the one "
        "figure that the broker's disk moves from round to round by more than the clients differ"
    )


def _rounds(data: dict[str, Any], scenario: str, system: str, field: str) -> list[float]:
    """A system's figure in each round of a scenario, in round order."""
    return [
        run["result"][field]
        for run in sorted(data["runs"], key=lambda run: run["round"])
        if run["scenario"] == scenario
        and run["system"] == system
        and run["result"].get(field) is not None
    ]


def _round_ratios(data: dict[str, Any], scenario: str, peer: str) -> list[float]:
    """leveret's figure over ``peer``'s in each round of a throughput scenario."""
    by: dict[tuple[int, str], float] = {}
    for run in data["runs"]:
        rate = run["result"].get("msgs_per_s")
        if run["scenario"] == scenario and rate:
            by[(run["round"], run["system"])] = rate
    rounds = sorted({r for r, _ in by})
    return [
        by[(r, "leveret")] / by[(r, peer)]
        for r in rounds
        if (r, "leveret") in by and (r, peer) in by
    ]


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
    seconds = env.get("seconds")
    minutes = f"{round(seconds / 60)} minutes" if seconds else "about half an hour"
    L: list[str] = []
    w = L.append
    w("# Performance")
    w("")
    w(
        "leveret beside raw pika, raw aio-pika, Dramatiq, Celery, FastStream and the Go amqp091 "
        "client (the broker's reference: what a compiled client gets) on the same local "
        "RabbitMQ, each with the guarantees leveret gives by default: persistent messages, a "
        "publisher confirm for every message, and an ack only after the handler returned. "
        f"The suite is in `bench/` (`make bench`, {minutes} on 2 cores in the last run; "
        "`make bench-smoke`, "
        "the smoke test that CI runs). **This page is generated** by `bench/run.py` from the results of the last full "
        "run (`bench/results/last.json`); edit `bench/docs.py`, not this file."
    )
    w("")
    w("## Results")
    w("")
    w(
        f"Medians of {_round_count(env)}. Round 1 runs every system in turn for each "
        f"scenario, then round 2 ...{_order(env)}{_extra_rounds(env)}. In brackets, the system's figure divided by leveret's: above 1 "
        "is better than leveret for ↑ rows, worse for ↓ rows."
    )
    w("")
    w(report.md_table(header, body))
    w("")
    w(
        f"Messages per measurement: publish {sizes.get('publish_1'):,} (1 caller), "
        f"{sizes.get('publish_8'):,} (8 callers), {sizes.get('publish_batch'):,} (batch), "
        f"{sizes.get('publish_concurrent', 0):,} (concurrent); drain "
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
        "The targets are leveret's performance goals, as ratios within this run. The retry figure is the wall "
        "time from the first attempt of the first message to the success of the last, every "
        "message failing once and being retried after the system's 10 ms delay. Both publish "
        "targets compare with the Go client publishing from one channel with 1000 deferred "
        "confirms in flight (its batch row)."
    )
    w("")
    w("## The memory of an idle `leveret worker`")
    w("")
    L.extend(idle_worker())
    w("")
    w("## What was fixed")
    w("")
    w(
        "The first run of this suite found five problems: the log line, the traceback header, "
        "the worker's per-delivery overhead, a `Publisher` that serialised threads on the "
        "confirm, and pika loaded by every worker; the runs after those fixes, a sixth: the "
        "asyncio AMQP client under the worker. What changed, with this run's figures:"
    )
    w("")
    for i, f in enumerate(fixed(data), 1):
        w(f"{i}. {f}")
    w("")
    w("## What remains")
    w("")
    left = findings(data)
    if left:
        w("What the figures and the profiles below still show, and why it is left:")
        w("")
        for i, f in enumerate(left, 1):
            w(f"{i}. {f}")
    else:
        w("Every target above is met in this run.")
    ahead = raw_ahead(data)
    if ahead:
        w("")
        w("Where a raw client is still ahead of leveret (no target covers these):")
        w("")
        for i, f in enumerate(ahead, 1):
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
        "- **Queue type**: leveret declares quorum queues by default, and the raw pika, aio-pika "
        "and Go baselines use quorum queues too, so that they are baselines for what leveret adds. "
        "Dramatiq, Celery and FastStream use classic durable queues, their defaults. The *queue "
        "type* scale curve below shows what that choice is worth on its own."
    )
    w(
        "- **Prefetch** is each system's default: leveret 8 (its concurrency), Dramatiq 16 (twice "
        "its threads), Celery 4 (4 x concurrency), FastStream unlimited; the hand-written pika, "
        "aio-pika and Go consumers use 8, like leveret."
    )
    w(
        "- **Per-message work in the consumer**: leveret and FastStream validate every body with "
        "pydantic (leveret strictly, against the message's model); raw pika and aio-pika "
        "`json.loads` it and the Go client `json.Unmarshal`s it; Dramatiq and Celery decode their JSON envelope. leveret writes one JSON "
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
        "worker holds in memory until it is due. FastStream has no delayed retry, and the Go "
        "baseline runs no retry scenario."
    )
    w("")
    w("## How it is measured")
    w("")
    w(
        "- Every measurement runs in a fresh driver process (`bench/driver.py`), which declares "
        "queues with names unique to the measurement, runs the scenario and deletes every queue "
        "and exchange afterwards. Consumers are processes of their own, started the way a user "
        "would (the `dramatiq` and `celery` CLIs; `python -m bench.systems.<name>` for the other "
        "Python ones, leveret's being the same `Worker` setup as `leveret worker`; `bench-go "
        "consume`, built from `bench/go`, for the Go client)."
    )
    w(
        "- **Publish**: connections are opened and one warm-up message sent per caller before the "
        "clock starts; callers are threads for blocking APIs and asyncio tasks for asyncio ones "
        "(the Go client: goroutines, a channel each, in its own program; it reports its own "
        "time after its warm-up). The concurrent scenario runs 1000 asyncio callers at once, "
        "each awaiting its own confirm, for the systems with an asyncio API. Afterwards every "
        "message is read back from the queue and counted by id."
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
        f"schedule of {env.get('rate', 500):g} msg/s (blocking APIs from {latency.PACERS} pacing "
        f"threads, or one per {latency.PACE_PER_THREAD} msg/s offered where that is more, on the "
        "offered-load curve; asyncio APIs one task per message; the Go consumer gets its messages "
        "from raw pika callers), each stamped with `time.time()` just before its publish call; "
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
        f"highest {foreign_max:.2f}. The smoke test runs with `--no-wait-quiet`: it neither "
        "waits nor reruns for other programs, since it keeps no figure."
    )
    w("")
    w("## Scale curves")
    w("")
    if data.get("scale"):
        w(
            "One round each, not medians, with one setting changed; the other settings are those "
            "of the table above. The first four curves are drain throughput; the last is the "
            "latency of the latency scenario as the offered rate grows, up to and past the rate "
            "where this machine (publishers, broker and consumer on the same two cores) stops "
            "keeping up: a point fell behind when its publishers or its consumer ran below "
            f"{scale.KEPT_UP:.0%} of the offered rate, or its median latency passed "
            f"{scale.QUEUED_MS:g} ms (messages waiting behind a standing queue)."
        )
        for line in saturation(data):
            w("")
            w(line)
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
        ("paced", "At the latency scenario's pace (the worker idles between deliveries)"),
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
        "make bench-smoke                                   # leveret, raw pika, aio-pika, Go: 100 messages each"
    )
    w("bench/.venv/bin/python bench/run.py --quick        # all systems, 500 messages, 1 round")
    w("bench/.venv/bin/python bench/run.py --systems leveret,dramatiq --scenarios drain,retry")
    w("bench/.venv/bin/python -m bench.profile --mode retry  # py-spy profile of a leveret worker")
    w(".venv/bin/python -m bench.worker_rss               # an idle `leveret worker`'s VmHWM")
    w("bench/.venv/bin/python bench/run.py --render bench/results/last.json  # rewrite this page")
    w("```")
    w("")
    return "\n".join(L)
