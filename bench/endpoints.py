"""endpoints: the cheap routes (GET /health/live, GET /api/v1/conversations) of a real `agentloop serve`
process under load.

Two loads, each from another process than the server's:
- saturation: `wrk` (Debian package) with a fixed number of open connections for a fixed time: the most
  requests per second the server sustains, and the latency percentiles (a Lua `done` hook prints them);
- paced: the seed's target rate (100 requests/s), wrk again with every connection pausing before each
  request, so the P95 is measured at that rate rather than at saturation.
The machine's 2 cores are shared by the server, the load generator and whatever else runs: the server gets
at most what is left, which the JSON's load averages show.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.common import Row

SEED_RPS, AIM_RPS, SEED_P95_MS = 100, 1000, 100.0
CONNECTIONS = 32
CONVERSATIONS = 50
ROUTES = {"health": "/health/live", "conversations": "/api/v1/conversations?limit=20"}

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"socket_errors\\": %d, \\"non_2xx\\": %d, " ..
    "\\"p50_us\\": %f, \\"p95_us\\": %f, \\"p99_us\\": %f, \\"mean_us\\": %f, \\"max_us\\": %f}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk(
    url: str,
    seconds: float,
    connections: int = CONNECTIONS,
    extra_lua: str = "",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk against `url`; requests/s, latency percentiles in ms, errors."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT + extra_lua)
        script.flush()
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        command.append(url)
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    duration_s = raw["duration_us"] / 1e6
    return {
        "tool": "wrk",
        "connections": connections,
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / duration_s,
        "errors": raw["socket_errors"] + raw["non_2xx"],
        "latency_ms": {
            key[:-3]: raw[key] / 1000.0 for key in ("p50_us", "p95_us", "p99_us", "mean_us", "max_us")
        },
    }


def paced(
    url: str, rate: float, seconds: float, connections: int = 10, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """About `rate` requests/s: wrk with each connection waiting connections/rate s before each request (a
    Lua `delay` hook). A slow answer delays that connection's next request, so `achieved_rps` is reported."""
    pause_ms = 1000.0 * connections / rate
    result = wrk(url, seconds, connections, f"delay = function() return {pause_ms:.0f} end\n", headers)
    return {**result, "target_rps": rate, "achieved_rps": result["requests_per_s"]}


async def seed_conversations(url: str, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as client:
        for index in range(CONVERSATIONS):
            response = await client.post(url + "/api/v1/conversations", json={"title": f"bench {index}"})
            response.raise_for_status()


async def run(quick: bool) -> dict[str, Any]:
    saturate_s, paced_s = (5.0, 5.0) if quick else (20.0, 15.0)
    if shutil.which("wrk") is None:
        raise RuntimeError("the endpoints benchmark needs wrk: apt-get install -y wrk")
    measured: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="agentloop-bench-endpoints-") as data_dir,
        procs.ours(Path(data_dir)) as server,
    ):
        await seed_conversations(server.url, server.headers)
        for name, path in ROUTES.items():
            url, headers = server.url + path, server.headers
            wrk(url, 1.0, headers=headers)  # warm-up
            measured[name] = {
                "saturation": await asyncio.to_thread(wrk, url, saturate_s, CONNECTIONS, "", headers),
                "paced": await asyncio.to_thread(paced, url, SEED_RPS, paced_s, 10, headers),
            }
        memory = server.memory()
    return _result(measured, saturate_s, paced_s, memory)


def _result(
    measured: dict[str, dict[str, Any]], saturate_s: float, paced_s: float, memory: dict[str, float]
) -> dict[str, Any]:
    rows = []
    for name, path in ROUTES.items():
        saturation, pace = measured[name]["saturation"], measured[name]["paced"]
        rps = saturation["requests_per_s"]
        rows.append(
            Row(
                f"endpoints {path}: sustained req/s ({CONNECTIONS} connections; ratio = / seed {SEED_RPS})",
                "req/s",
                rps,
                float(SEED_RPS),
                rps / SEED_RPS,
                f">= {SEED_RPS} (aim {AIM_RPS})",
                rps >= SEED_RPS and saturation["errors"] == 0,
            )
        )
        p95 = pace["latency_ms"]["p95"]
        rows.append(
            Row(
                f"endpoints {path}: P95 at {SEED_RPS} req/s paced (saturated: "
                f"{saturation['latency_ms']['p95']:.0f} ms)",
                "ms",
                p95,
                SEED_P95_MS,
                p95 / SEED_P95_MS,
                f"< {SEED_P95_MS:.0f} ms",
                p95 < SEED_P95_MS and pace["errors"] == 0,
            )
        )
    return {
        "parameters": {
            "routes": ROUTES,
            "saturation_s": saturate_s,
            "paced_s": paced_s,
            "connections": CONNECTIONS,
            "conversations_stored": CONVERSATIONS,
            "server": "agentloop serve (uvicorn, default settings, INFO log level), SQLite",
            "load": "wrk -t1, saturating (closed loop) and paced (Lua delay per request), another process",
        },
        "measured": measured,
        "memory_mb": memory,
        "notes": [
            "endpoints: server, load generator and other jobs share the machine's 2 cores; requests/s is "
            "what the server reached with the cores it got, not a per-core figure."
        ],
        "rows": rows,
    }
