"""One measurement in a process of its own: ``python -m bench.driver '<json spec>'``.

The spec names the system, the scenario, the message count, the parameters, the broker URL,
a unique tag and a work directory. The driver declares the system's queues, runs the scenario,
deletes every queue and exchange it used (whatever happened), and prints one line,
``RESULT <json>``, last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import common
from bench.scenarios import SCENARIOS
from bench.systems import load


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    system = load(spec["system"], spec["url"], spec["tag"], spec.get("params") or {})
    started = time.monotonic()
    if system.unavailable:
        return {"status": "n/a", "why": system.unavailable, "wall_s": 0.0}
    try:
        system.declare()
        result = SCENARIOS[spec["scenario"]](system, spec["n"], spec.get("params") or {}, workdir)
        result.setdefault("status", "ok")
    except Exception as exc:
        result = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-3000:],
        }
    finally:
        with contextlib.suppress(Exception):
            system.close()
        cleanup(spec["url"], system)
    result["wall_s"] = time.monotonic() - started
    return result


def cleanup(url: str, system: Any, patience: float = 60.0) -> None:
    """Delete the measurement's queues and exchanges, retrying while the broker is restarting."""
    deadline = time.monotonic() + patience
    while True:
        try:
            common.delete(url, system.queues(), system.exchanges())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.argv[1])
    if spec.get("cleanup"):  # after a failed or disturbed attempt: only delete its names
        system = load(spec["system"], spec["url"], spec["tag"], spec.get("params") or {})
        cleanup(spec["url"], system)
        print("RESULT " + json.dumps({"status": "cleaned"}), flush=True)
        return
    result = measure(spec)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
