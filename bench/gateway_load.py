"""Closed-loop load for bench.gateway: `concurrency` aiohttp workers POST the same body for `seconds`.

A stream counts as done when its body ends; its latency is the whole stream's time. Only 200
answers that end with `[DONE]` (streams) count; anything else is an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Phase:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    cpu_seconds: float | None = None

    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def quantile(self, q: str) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * int(q) / 100))]

    def cpu_per_request_us(self) -> float:
        if self.cpu_seconds is None or not self.latencies:
            return float("nan")
        return self.cpu_seconds / len(self.latencies) * 1e6

    def cpu_percent(self) -> float:
        return 100 * (self.cpu_seconds or 0.0) / self.seconds

    def summary(self) -> str:
        cpu = f"{self.cpu_per_request_us():8.0f} µs CPU/req" if self.cpu_seconds is not None else ""
        return (f"{self.rate():8.1f} req/s  p50 {self.quantile('50') * 1000:7.2f} ms  "
                f"p99 {self.quantile('99') * 1000:7.2f} ms  errors {self.errors}  {cpu}")


async def _worker(session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str],
                  stream: bool, stop_at: float, phase: Phase) -> None:
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                body = await resp.read()
            ok = resp.status == 200 and (not stream or body.endswith(b"data: [DONE]\n\n"))
        except aiohttp.ClientError:
            ok = False
        if ok:
            phase.latencies.append(time.monotonic() - started)
        else:
            phase.errors += 1


async def run_phase(base_url: str, key: str, body: dict[str, Any], concurrency: int, seconds: float) -> Phase:
    """Run `concurrency` workers for `seconds` against `base_url`/v1/chat/completions."""
    phase = Phase(seconds)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(
            _worker(session, f"{base_url}/v1/chat/completions", orjson.dumps(body), headers,
                    bool(body.get("stream")), stop_at, phase)
            for _ in range(concurrency)
        ))
    return phase
