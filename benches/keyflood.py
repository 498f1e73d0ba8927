#!/usr/bin/env python3
"""Key flood (issue 15 item 2) against the release binary: one account runs
up a debt, then a flood of made-up keys from one address pushes the account
store past `max_tracked`. Reports whether the debtor is still refused, how
many flood requests were served or refused as new accounts, the evictions,
the tracked accounts and the proxy's RSS (RELIABILITY.md has the figures).

    cargo build --release
    python3 benches/keyflood.py --keys 210000

Traffic goes to 127.0.0.1 only; the flood stops after --keys requests or
--seconds, whichever comes first.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import ADMIN_TOKEN, http_get, metric, proc_sample, read_until, start  # noqa: E402

SMALL = b'{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"flood"}]}'
BIG = b'{"model":"m","max_tokens":1000000,"messages":[{"role":"user","content":"debt"}]}'


async def request(reader, writer, key, body, extra=b""):
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {key}\r\ncontent-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    m = re.search(rb"content-length: (\d+)", head, re.I)
    payload = await asyncio.wait_for(reader.readexactly(int(m.group(1))), 30) if m else b""
    return int(head.split(b" ", 2)[1]), head + payload


async def once(port, key, body, extra=b""):
    """One request on its own connection, read to the end."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {key}\r\nconnection: close\r\ncontent-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
    await w.drain()
    text = await asyncio.wait_for(r.read(), 120)
    w.close()
    return int(text.split(b" ", 2)[1]), text


async def flood(port, keys, deadline, counts, workers=32):
    async def worker(w):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(w, keys, workers):
            if time.time() > deadline:
                break
            try:
                status, text = await request(reader, writer, f"flood-{i:07d}", SMALL)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                counts["errors"] += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status == 200:
                counts["served"] += 1
            elif b"network-new_accounts" in text:
                counts["refused_new_account"] += 1
            else:
                counts[f"status_{status}"] = counts.get(f"status_{status}", 0) + 1
        writer.close()

    await asyncio.gather(*(worker(w) for w in range(workers)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=210_000)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--max-tracked", type=int, default=50_000)
    ap.add_argument("--binary", default="target/release/distill-guard")
    args = ap.parse_args()
    mock = start([args.binary, "mock-upstream", "--listen", "127.0.0.1:0"])
    up = read_until(mock.stdout, r"listening on http://([0-9.:]+)", time.time() + 20).group(1)
    cfg = os.path.join(tempfile.mkdtemp(), "keyflood.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""
[[listener]]
address = "127.0.0.1:0"
[upstream]
url = "http://{up}"
[server]
workers = 2
[tiers.default]
requests_per_minute = 600
burst_requests = 100
input_tokens_per_minute = 100000000
output_tokens_per_minute = 60000
max_concurrent = 16
[accounts]
max_tracked = {args.max_tracked}
[admin]
address = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
[logging]
format = "json"
level = "warn,distill_guard=info"
"""
        )
    proxy = start([args.binary, "serve", "--config", cfg])
    port = int(read_until(proxy.stderr, r'"message":"listening","address":"127\.0\.0\.1:(\d+)"', time.time() + 30).group(1))
    admin = int(read_until(proxy.stderr, r'"message":"admin API listening","address":"127\.0\.0\.1:(\d+)"', time.time() + 30).group(1))
    subprocess.Popen(["cat"], stdin=proxy.stderr, stdout=subprocess.DEVNULL)
    counts = {"served": 0, "refused_new_account": 0, "errors": 0}

    async def go():
        # 1M output tokens on a 60k/min budget: about 16 minutes of debt.
        status, _ = await once(port, "debtor", BIG, b"x-mock-output-tokens: 1000000\r\n")
        assert status == 200, status
        t0 = time.time()
        await flood(port, args.keys, t0 + args.seconds, counts)
        flood_s = time.time() - t0
        status, text = await once(port, "debtor", SMALL)
        m = await http_get("127.0.0.1", admin, "/metrics")
        rss_kb, fds = proc_sample(proxy.pid)
        return {
            "flood_keys_sent": sum(v for v in counts.values()),
            "flood_seconds": round(flood_s, 1),
            **counts,
            "debtor_after_flood": status,
            "debtor_refused_for_its_debt": status == 429 and b"account-output_tokens" in text,
            "tracked_accounts": metric(m, "distill_guard_tracked_accounts"),
            "kept_over_cap": metric(m, "distill_guard_tracked_accounts_kept_over_cap"),
            "evictions": metric(m, "distill_guard_account_evictions_total"),
            "new_accounts_refused_metric": metric(m, "distill_guard_new_accounts_refused_total"),
            "rss_mib": round(rss_kb / 1024, 1),
        }

    try:
        print(json.dumps(asyncio.run(go())))
    finally:
        for p in (proxy, mock):
            p.terminate()
        for p in (proxy, mock):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
