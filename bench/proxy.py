"""Latency through ``sdexec proxy`` next to a direct connection, for running servers.

Usage::

    .venv/bin/python bench/proxy.py [--runs 200] URI [URI...]

It starts no server: give it the URIs of running ones (``local://``,
``ssh://``, ``tcp://``; the usual ``SDEXEC_SSH*`` and ``SDEXEC_CURVE_*``
settings apply).  For each URI it measures, with the asyncio client:

* ``connect`` - :meth:`Handle.connect` up to the handshake byte (a new
  connection per sample; fewer samples, as ssh costs a key exchange);
* ``rpc``     - an ``attr.get`` round trip over one connection;
* ``exec``    - ``/bin/true`` from ``exec`` to ``finished`` over one connection;

first directly, then from the child of ``sdexec proxy URI`` (this script
runs itself as the proxy's command with ``--inner``).  A benchmark, not a
test: it prints, it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdexec.client.handle import Handle  # noqa: E402
from sdexec.client.process import run  # noqa: E402


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s) * 1e3,
        "p90_ms": s[min(len(s) - 1, round(0.9 * (len(s) - 1)))] * 1e3,
        "runs": len(s),
    }


async def connect_time(uri: str, samples: int) -> list[float]:
    out: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        h = await Handle.connect(uri)
        out.append(time.perf_counter() - t0)
        await h.close()
    return out


async def measure(uris: dict[str, str], runs: int, connects: int) -> dict[str, Any]:
    """Round-robin over the connections, so each sees the same machine state."""
    env = {"PATH": "/usr/bin:/bin"}
    samples: dict[str, dict[str, list[float]]] = {}
    handles: dict[str, Handle] = {}
    for how, uri in uris.items():
        samples[how] = {"connect": await connect_time(uri, connects), "rpc": [], "exec": []}
        handles[how] = await Handle.connect(uri)
        await run(handles[how], ["/bin/true"], env=env)  # warm up
    for _ in range(runs):
        for how, handle in handles.items():
            t0 = time.perf_counter()
            await handle.rpc("attr.get", {"name": "version"})
            t1 = time.perf_counter()
            result = await run(handle, ["/bin/true"], env=env)
            t2 = time.perf_counter()
            if result.status != 0:
                raise RuntimeError("exec failed")
            samples[how]["rpc"].append(t1 - t0)
            samples[how]["exec"].append(t2 - t1)
    for handle in handles.values():
        await handle.close()
    return {how: {k: summary(v) for k, v in s.items()} for how, s in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--connects", type=int, default=5, help="connect samples (default 5)")
    parser.add_argument("--inner", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("uris", nargs="*", metavar="URI")
    args = parser.parse_args()
    if args.inner:
        uris = {"direct": args.inner, "proxy": os.environ["SDEXEC_URI"]}
        print(json.dumps(asyncio.run(measure(uris, args.runs, args.connects))))
        return 0
    results: dict[str, Any] = {}
    print(f"{'median / p90, ms':<34}{'connect':>18}{'attr.get rpc':>18}{'exec /bin/true':>18}")
    for uri in args.uris:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sdexec.cli.main",
                "proxy",
                uri,
                sys.executable,
                __file__,
                "--inner",
                uri,
                "--runs",
                str(args.runs),
                "--connects",
                str(args.connects),
            ],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        results[uri] = json.loads(r.stdout)
        for how, cells in results[uri].items():
            row = "".join(
                f"{cells[k]['median_ms']:>10.2f} /{cells[k]['p90_ms']:>6.2f}"
                for k in ("connect", "rpc", "exec")
            )
            print(f"{uri.split(':', 1)[0] + ' ' + how:<34}{row}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
