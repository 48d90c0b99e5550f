"""Gateway benchmark: the OpenAI-compatible endpoint against submitting with the Python SDK.

Run from the repository root::

    .venv/bin/python -m bench.gateway

`kanbanmesh serve` (embedded broker, persistence on) and 4 echo workers at zero delay, each
in its own process, as in bench/dispatch.py. Then, in one run:

* non-streaming chat completions through `POST /v1/chat/completions` (httpx, keep-alive) at
  1, 8 and 32 concurrent clients: requests/s, p50 and p99 latency;
* the endpoint's added latency: one request at a time through the endpoint, and the same task
  submitted with the SDK (`submit` + `result`), alternating, p50 of each.

Target (the gateway issue): under 3 ms added at p50.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import httpx

from bench.dispatch import mesh
from client_sdk import AsyncClient
from kanbanmesh.peer import http_base

MESSAGES = [{"role": "user", "content": "how fast is the gateway"}]


async def gateway_run(url: str, concurrency: int, total: int) -> tuple[float, list[float]]:
    """`total` requests from `concurrency` clients at once; returns (requests/s, latencies ms)."""
    samples: list[float] = []
    per_client = total // concurrency

    async def client() -> None:
        async with httpx.AsyncClient(base_url=http_base(url), timeout=60) as http:
            for _ in range(per_client):
                start = time.perf_counter()
                reply = await http.post("/v1/chat/completions", json={"model": "echo", "messages": MESSAGES})
                reply.raise_for_status()
                samples.append((time.perf_counter() - start) * 1000)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    return len(samples) / (time.perf_counter() - started), samples


async def added_latency(url: str, n: int) -> tuple[float, float]:
    """p50 of one request at a time through the endpoint and through the SDK, alternating."""
    through_api: list[float] = []
    through_sdk: list[float] = []
    async with AsyncClient(url) as sdk, httpx.AsyncClient(base_url=http_base(url), timeout=60) as http:
        for i in range(n + 10):
            start = time.perf_counter()
            (await http.post("/v1/chat/completions", json={"model": "echo", "messages": MESSAGES})).raise_for_status()
            api_ms = (time.perf_counter() - start) * 1000
            start = time.perf_counter()
            await (await sdk.submit(messages=MESSAGES, model="echo", durable_timeout_s=None)).result()
            sdk_ms = (time.perf_counter() - start) * 1000
            if i >= 10:  # warm-up excluded
                through_api.append(api_ms)
                through_sdk.append(sdk_ms)
    return statistics.median(through_api), statistics.median(through_sdk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=640, help="per concurrency level")
    parser.add_argument("--latency-requests", type=int, default=200)
    args = parser.parse_args()
    with mesh(4, persist=True) as url:

        async def run() -> None:
            async with AsyncClient(url) as client:
                await client.wait_for_workers(4, timeout_s=30)
            print(f"\n| {'concurrent clients':>18} | {'requests/s':>10} | {'p50 ms':>7} | {'p99 ms':>7} |")
            print(f"|{'-' * 20}|{'-' * 12}|{'-' * 9}|{'-' * 9}|")
            for concurrency in (1, 8, 32):
                rate, samples = await gateway_run(url, concurrency, args.requests)
                q = statistics.quantiles(samples, n=100)
                print(f"| {concurrency:>18} | {rate:>10.0f} | {statistics.median(samples):>7.2f} | {q[98]:>7.2f} |")
            api, sdk = await added_latency(url, args.latency_requests)
            print(f"\none at a time, p50: endpoint {api:.2f} ms, SDK {sdk:.2f} ms, "
                  f"added by the endpoint {api - sdk:+.2f} ms")

        anyio.run(run)


if __name__ == "__main__":
    main()
