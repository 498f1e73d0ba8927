#!/usr/bin/env python3
"""Soak: the release binary under moderate load for a fixed time, rotating
through up to a million distinct API keys, with misbehaving clients mixed in
(one-byte connections, trickled bodies, clients that never read, idle
keep-alive connections). Every 10 s it samples the proxy's RSS, open file
descriptors and a few /metrics values into a CSV, and at the end draws them
(RELIABILITY.md shows the plot and the command).

    cargo build --release
    python3 benches/soak.py --seconds 1800 --out target/soak

Traffic goes to 127.0.0.1 only; every loop stops at the deadline.
"""

import argparse
import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BODY = b'{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"soak test prompt"}]}'


def start(cmd, env=None):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def read_until(stream, pattern, deadline):
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            break
        m = re.search(pattern, line.decode(errors="replace"))
        if m:
            return m
    raise SystemExit(f"soak: did not see {pattern!r} in time")


def start_mock(binary):
    """The built-in mock upstream on a free loopback port: (process, "host:port"), its output drained."""
    mock = start([binary, "mock-upstream", "--listen", "127.0.0.1:0"])
    up = read_until(mock.stdout, r"listening on http://([0-9.:]+)", time.time() + 20).group(1)
    subprocess.Popen(["cat"], stdin=mock.stdout, stdout=subprocess.DEVNULL)
    return mock, up


def stop(*procs):
    """Terminates `procs` and waits for them (at most 30 s each)."""
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)


def base_config(upstream, workers=0):
    """What every bench's proxy config starts with: listener and admin API on free loopback ports (the admin API
    with ADMIN_TOKEN), `upstream`, `workers` (0: one per core), and a JSON log at info, which start_proxy reads."""
    return f"""
[[listener]]
address = "127.0.0.1:0"
[upstream]
url = "http://{upstream}"
[server]
workers = {workers}
[admin]
address = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
watch_config = false
[logging]
format = "json"
level = "info"
"""


async def exchange(reader, writer, key, body, timeout=10):
    """One POST /v1/messages with `body` as `key` on an open connection; returns the status."""
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {key}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    m = re.search(rb"content-length: (\d+)", head, re.I)
    if not m:
        raise ConnectionError("no content-length")
    await asyncio.wait_for(reader.readexactly(int(m.group(1))), timeout)
    return int(head.split(b" ", 2)[1])


def start_proxy(binary, config, name):
    """The proxy on `config` (TOML whose listener and admin API take free ports and whose log is JSON at info):
    (process, port, admin port) once both listen; its log is drained from then on."""
    cfg = os.path.join(tempfile.mkdtemp(), f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(config)
    proxy = start([binary, "serve", "--config", cfg])
    deadline = time.time() + 30
    port = admin = None
    while port is None or admin is None:
        line = proxy.stderr.readline().decode(errors="replace")
        if not line or time.time() > deadline:
            raise SystemExit(f"{name}: proxy did not start")
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "listening":
            port = int(fields["address"].rsplit(":", 1)[1])
        if fields.get("message") == "admin API listening":
            admin = int(fields["address"].rsplit(":", 1)[1])
    # Keep draining the proxy's log so it never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=proxy.stderr, stdout=subprocess.DEVNULL)
    return proxy, port, admin


def proc_sample(pid):
    rss_kb = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb, fds


ADMIN_TOKEN = "soak-admin-token-0123456789"


async def http_get(host, port, path):
    r, w = await asyncio.open_connection(host, port)
    w.write(
        f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n"
        "connection: close\r\n\r\n".encode()
    )
    await w.drain()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data.decode(errors="replace")


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def metric_sum(text, prefix):
    return sum(float(v) for v in re.findall(rf"^{re.escape(prefix)}\{{[^}}]*\}} (\S+)$", text, re.M))


class Stats:
    def __init__(self):
        self.sent = 0
        self.ok = 0
        self.refused = 0
        self.errors = 0
        self.slow_opened = 0
        self.slow_closed_by_proxy = 0


async def honest_worker(port, stats, keys, deadline, wid, workers, rate_per_worker):
    """Keep-alive client; each request with the next key in the rotation."""
    i = wid
    interval = 1.0 / rate_per_worker
    reader = writer = None
    while time.time() < deadline:
        t0 = time.time()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = f"soak-key-{i % keys:07d}"
            i += workers
            status = await exchange(reader, writer, key, BODY)
            stats.sent += 1
            if status == 200:
                stats.ok += 1
            elif status in (429, 403):
                stats.refused += 1
            else:
                stats.errors += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
        await asyncio.sleep(max(0.0, interval - (time.time() - t0)))
    if writer is not None:
        writer.close()


async def misbehave(port, stats, kind):
    """One misbehaving connection; returns when the proxy closes it."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    stats.slow_opened += 1
    try:
        if kind == "byte":
            w.write(b"P")
        elif kind == "trickle":
            w.write(
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: slow\r\n"
                b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
            )
        elif kind == "noread":
            body = b'{"model":"m","max_tokens":3000000,"stream":true,"messages":[{"role":"user","content":"x"}]}'
            w.write(
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: noread\r\n"
                b"content-type: application/json\r\nx-mock-output-tokens: 3000000\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        await w.drain()
        if kind == "noread":
            # Never read until the proxy gives up on us, then drain to EOF.
            await asyncio.sleep(15)
        end = time.time() + 120
        while time.time() < end:
            if kind == "trickle":
                w.write(b" ")
                await w.drain()
            try:
                data = await asyncio.wait_for(r.read(65536), 1)
            except asyncio.TimeoutError:
                continue
            if not data:
                stats.slow_closed_by_proxy += 1
                break
    except (OSError, asyncio.TimeoutError, ConnectionError):
        stats.slow_closed_by_proxy += 1
    finally:
        w.close()


async def misbehavers(port, stats, deadline):
    tasks = set()
    while time.time() < deadline:
        for kind, n in (("byte", 20), ("trickle", 5), ("noread", 2), ("idle", 5)):
            for _ in range(n):
                t = asyncio.create_task(misbehave(port, stats, kind))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        await asyncio.sleep(10)
    for t in list(tasks):
        t.cancel()


async def sampler(pid, admin, stats, deadline, rows, t_start):
    while time.time() < deadline + 0.5:
        try:
            text = await http_get("127.0.0.1", admin, "/metrics")
        except OSError:
            text = ""
        rss_kb, fds = proc_sample(pid)
        row = {
            "t_s": round(time.time() - t_start),
            "rss_mib": round(rss_kb / 1024, 1),
            "open_fds": fds,
            "connections_open": metric(text, "distill_guard_connections_open"),
            "tracked_accounts": metric(text, "distill_guard_tracked_accounts"),
            "requests_sent": stats.sent,
            "ok": stats.ok,
            "refused": stats.refused,
            "errors": stats.errors,
            "closed_by_deadline": metric_sum(text, "distill_guard_connections_closed_by_deadline_total"),
            "misbehaving_opened": stats.slow_opened,
            "misbehaving_closed": stats.slow_closed_by_proxy,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        await asyncio.sleep(10)


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: matplotlib not installed, no plot", file=sys.stderr)
        return
    t = [r["t_s"] / 60 for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    ax[0].plot(t, [r["rss_mib"] for r in rows])
    ax[0].set_ylabel("RSS (MiB)")
    ax[1].plot(t, [r["open_fds"] for r in rows], label="open fds")
    ax[1].plot(t, [r["connections_open"] for r in rows], label="connections open")
    ax[1].set_ylabel("count")
    ax[1].legend()
    ax[2].plot(t, [r["tracked_accounts"] for r in rows])
    ax[2].set_ylabel("tracked accounts")
    ax[2].set_xlabel("minutes")
    fig.suptitle("distill-guard soak: RSS, fds and tracked accounts every 10 s")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=1800)
    ap.add_argument("--rate", type=int, default=300, help="honest requests per second")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--max-tracked", type=int, default=50_000)
    ap.add_argument("--binary", default="target/release/distill-guard")
    ap.add_argument("--out", default="target/soak")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    mock, up = start_mock(args.binary)
    proxy, port, admin = start_proxy(
        args.binary,
        base_config(up, workers=2)
        + f"""
[limits]
max_connections = 1024
request_head_timeout_ms = 5000
idle_connection_timeout_ms = 10000
body_read_timeout_ms = 5000
write_stall_timeout_ms = 10000
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 100000000
output_tokens_per_minute = 100000000
max_concurrent = 16
[accounts]
max_tracked = {args.max_tracked}
new_accounts_per_minute_at_capacity = 100000
""",
        "soak",
    )

    stats = Stats()
    rows = []
    t_start = time.time()
    deadline = t_start + args.seconds
    workers = 32

    async def run():
        tasks = [
            honest_worker(port, stats, args.keys, deadline, w, workers, args.rate / workers)
            for w in range(workers)
        ]
        tasks.append(misbehavers(port, stats, deadline))
        tasks.append(sampler(proxy.pid, admin, stats, deadline, rows, t_start))
        await asyncio.gather(*tasks)

    async def final_metrics():
        return await http_get("127.0.0.1", admin, "/metrics")

    try:
        asyncio.run(run())
        # The proxy's own counters at the end, kept beside the CSV.
        with open(os.path.join(args.out, "metrics-final.txt"), "w") as f:
            f.write(asyncio.run(final_metrics()))
    finally:
        proxy.terminate()
        mock.terminate()
        proxy.wait(30)
        mock.wait(30)
    with open(os.path.join(args.out, "soak.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    plot(rows, os.path.join(args.out, "soak.png"))
    last = rows[-1]
    rss = [r["rss_mib"] for r in rows]
    fds = [r["open_fds"] for r in rows]
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "requests": last["requests_sent"],
                "ok": last["ok"],
                "refused": last["refused"],
                "errors": last["errors"],
                "distinct_keys": min(last["requests_sent"], args.keys),
                "misbehaving_connections": last["misbehaving_opened"],
                "closed_by_deadline": last["closed_by_deadline"],
                "rss_mib_min_median_max": [min(rss), sorted(rss)[len(rss) // 2], max(rss)],
                "fds_min_median_max": [min(fds), sorted(fds)[len(fds) // 2], max(fds)],
                "proxy_exit": proxy.returncode,
            }
        )
    )


if __name__ == "__main__":
    main()
