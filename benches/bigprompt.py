#!/usr/bin/env python3
"""Long prompts through the release binary: the proxy's CPU per request and
the request's latency for prompts from 2 KiB to several MiB, and what they do
to small requests on other connections meanwhile (a worker that inspects a
long prompt itself serves nothing else until it is done).

    cargo build --release
    python3 benches/bigprompt.py --sizes 2048,32768,262144,1048576,8388608

For each size, one keep-alive connection sends --requests requests of that
prompt size back to back (each its own prompt text, so nothing is reused
between them), while --small-connections other connections (from a
process of their own) send a short request every --small-interval-ms and
time them. Prints, per size: the proxy's CPU time in the window (user +
system from /proc, in 10 ms ticks, the small requests' share included)
divided by the long requests, the long request's median latency, and the
small requests' median and p99 latency in the same window, beside a window
with no long requests. The proxy runs the
full default policy with detection in shadow and budgets raised
(benches/common/mod.rs), against the built-in mock upstream. Traffic goes to
127.0.0.1 only; every loop is bounded by --requests and a deadline.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from caps import raised_budgets  # noqa: E402
from soak import base_config, exchange, start_mock, start_proxy, stop  # noqa: E402

WORDS = (
    "the model reason about a distributed system with latency budget cluster account token stream "
    "request policy error network review change design record index value table query answer"
).split()


def prompt_text(size, seed):
    rng = random.Random(seed)
    out, n = [], 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:size]


def body(prompt):
    return json.dumps(
        {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime, stime


async def exchange_ok(reader, writer, key, data):
    status = await exchange(reader, writer, key, data, timeout=60)
    if status != 200:
        raise ConnectionError(f"status {status}")


async def small_client(port, stop, interval, out, cid):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = body("Say hello in five words, please.")
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        await exchange_ok(reader, writer, f"small-{cid}-{i % 50}", data)
        out.append(time.perf_counter() - t0)
        i += 1
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
    writer.close()


def small_process(port, interval, connections, stop, out):
    """The small clients, in a process of their own: the long requests' sender (megabytes a request) must not
    delay their own timing."""

    async def run():
        stop_ev = asyncio.Event()
        lat = []

        async def watch():
            while not stop.is_set():
                await asyncio.sleep(0.01)
            stop_ev.set()

        tasks = [
            asyncio.create_task(small_client(port, stop_ev, interval, lat, c)) for c in range(connections)
        ]
        await watch()
        await asyncio.gather(*tasks)
        return lat

    out.put(asyncio.run(run()))


async def window(port, pid, size, requests, args):
    """One window: `requests` long requests of `size` bytes (none if 0) beside the small clients."""
    bodies = [body(prompt_text(size, size * 1000 + k)) for k in range(requests if size else 0)]
    stop = multiprocessing.Event()
    results = multiprocessing.Queue()
    smalls = multiprocessing.Process(
        target=small_process,
        args=(port, args.small_interval_ms / 1000, args.small_connections, stop, results),
    )
    smalls.start()
    await asyncio.sleep(0.5)
    long_lat = []
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    if size:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        deadline = time.time() + args.deadline
        for k, data in enumerate(bodies):
            if time.time() > deadline:
                break
            s = time.perf_counter()
            await exchange_ok(reader, writer, f"long-{k % 20}", data)
            long_lat.append(time.perf_counter() - s)
        writer.close()
    else:
        await asyncio.sleep(args.idle_seconds)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    stop.set()
    small = results.get(timeout=60)
    smalls.join(timeout=30)
    return long_lat, small, cpu, elapsed


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2048,32768,262144,1048576,8388608")
    ap.add_argument("--requests", type=int, default=40, help="long requests per size")
    ap.add_argument("--deadline", type=float, default=120, help="seconds per size at most")
    ap.add_argument("--small-connections", type=int, default=4)
    ap.add_argument("--small-interval-ms", type=float, default=20)
    ap.add_argument("--idle-seconds", type=float, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--binary", default="target/release/distill-guard")
    args = ap.parse_args()

    mock, up = start_mock(args.binary)
    proxy, port, _admin = start_proxy(
        args.binary,
        base_config(up, args.workers)
        + f"""
[detection]
mode = "shadow"
{raised_budgets()}
""",
        "bigprompt",
    )

    print(
        "| prompt bytes | long requests | proxy CPU ÷ long requests | long request p50 | "
        "small requests p50 / p99 (same window) |"
    )
    print("|---|---|---|---|---|", flush=True)
    try:
        for size in [0] + [int(s) for s in args.sizes.split(",")]:
            lat, small, cpu, elapsed = asyncio.run(window(port, proxy.pid, size, args.requests, args))
            if size:
                print(
                    f"| {size} | {len(lat)} | {cpu / max(1, len(lat)) * 1e3:.2f} ms | "
                    f"{statistics.median(lat) * 1e3:.2f} ms | "
                    f"{pct(small, 0.5) * 1e3:.2f} / {pct(small, 0.99) * 1e3:.2f} ms |",
                    flush=True,
                )
            else:
                print(
                    f"| none ({elapsed:.0f} s) | 0 | — | — | "
                    f"{pct(small, 0.5) * 1e3:.2f} / {pct(small, 0.99) * 1e3:.2f} ms |",
                    flush=True,
                )
    finally:
        stop(proxy, mock)


if __name__ == "__main__":
    main()
