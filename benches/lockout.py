#!/usr/bin/env python3
"""Lockout: the attacks of issue 15 item 1 against the release binary with
its default deadlines, one attack at a time. For each: N connections from
127.0.0.1 that each do one thing and then nothing; meanwhile an honest
client on 127.0.0.2 sends one request a second. Reports how many attack
connections the proxy accepted, when it closed them (median, max) and how
the honest client fared (RELIABILITY.md has the table and the command).

    cargo build --release
    python3 benches/lockout.py --connections 1024

Traffic goes to 127.0.0.0/8 only; every loop stops by itself.
"""

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import read_until, start  # noqa: E402

BODY = b'{"model":"m","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'

ATTACKS = {
    "one_byte": b"P",
    "h2_preface_settings": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]),
    "body_trickle": (
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: trickle\r\n"
        b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
    ),
    "tls_then_silence": None,
    "hpack_bomb": None,
}


def hpack_bomb():
    """HTTP/2 preface, SETTINGS, then one HEADERS block that raises the HPACK
    table size to 2^27, inserts a 3000-byte name and references it 5000
    times (issue 15 item 4)."""
    block = bytes([0x3F, 0xE1, 0xFF, 0xFF, 0x3F, 0x40, 0x7F, 0xB9, 0x16]) + b"x" * 3000 + b"\0"
    block += bytes([0xBE]) * 5000
    n = len(block)
    head = bytes([n >> 16 & 0xFF, n >> 8 & 0xFF, n & 0xFF, 1, 0x5, 0, 0, 0, 1])
    return ATTACKS["h2_preface_settings"] + head + block


def proc_cpu_s(pid):
    """User + system CPU seconds the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def attack_conn(port, kind, closed_at, t0, tls_ctx, limit_s):
    # Times are from this connection's own start: opening 1024 connections
    # takes the client more than a second.
    t0 = time.time()
    try:
        if kind == "tls_then_silence":
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls_ctx, server_hostname="localhost")
        else:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(hpack_bomb() if kind == "hpack_bomb" else ATTACKS[kind])
            await w.drain()
    except (OSError, ssl.SSLError):
        closed_at.append(("refused", time.time() - t0))
        return
    end = time.time() + limit_s
    try:
        while time.time() < end:
            if kind == "body_trickle":
                # One byte every 5 s, as in the issue.
                w.write(b" ")
                await w.drain()
            try:
                data = await asyncio.wait_for(r.read(65536), 5 if kind == "body_trickle" else 1)
            except asyncio.TimeoutError:
                continue
            if not data:
                break
        closed_at.append(("closed", time.time() - t0))
    except (OSError, ConnectionError, ssl.SSLError):
        closed_at.append(("closed", time.time() - t0))
    finally:
        w.close()


async def honest(port, tls_ctx, results, until):
    while time.time() < until:
        t = time.time()
        try:
            r, w = await asyncio.open_connection(
                "127.0.0.1",
                port,
                local_addr=("127.0.0.2", 0),
                ssl=tls_ctx,
                server_hostname="localhost" if tls_ctx else None,
            )
            w.write(
                b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: honest\r\n"
                b"content-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(BODY)}\r\n\r\n".encode()
                + BODY
            )
            await w.drain()
            data = await asyncio.wait_for(r.read(), 10)
            w.close()
            results.append((data.startswith(b"HTTP/1.1 200"), time.time() - t))
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            results.append((False, time.time() - t))
        await asyncio.sleep(max(0.0, 1.0 - (time.time() - t)))


def make_cert(tmp):
    key = os.path.join(tmp, "key.pem")
    cert = os.path.join(tmp, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


def run_one(args, up, kind, tmp):
    tls = kind == "tls_then_silence"
    listener = '[[listener]]\naddress = "127.0.0.1:0"\n'
    tls_ctx = None
    if tls:
        cert, key = make_cert(tmp)
        listener += f'[listener.tls]\ncert_path = "{cert}"\nkey_path = "{key}"\n'
        tls_ctx = ssl.create_default_context(cafile=cert)
    cfg = os.path.join(tmp, f"{kind}.toml")
    with open(cfg, "w") as f:
        f.write(
            f"""{listener}
[upstream]
url = "http://{up}"
[limits]
max_connections = {args.connections}
[server]
workers = 2
[admin]
enabled = false
[logging]
format = "json"
level = "warn,distill_guard=info"
"""
        )
    proxy = start([args.binary, "serve", "--config", cfg])
    m = read_until(proxy.stderr, r'"message":"listening","address":"127\.0\.0\.1:(\d+)"', time.time() + 30)
    port = int(m.group(1))
    subprocess.Popen(["cat"], stdin=proxy.stderr, stdout=subprocess.DEVNULL)
    closed_at, honest_results = [], []
    cpu0 = proc_cpu_s(proxy.pid)
    t0 = time.time()

    async def go():
        attacks = [
            attack_conn(port, kind, closed_at, t0, tls_ctx, args.limit)
            for _ in range(args.connections)
        ]
        await asyncio.gather(honest(port, tls_ctx, honest_results, t0 + args.limit), *attacks)

    try:
        asyncio.run(go())
        cpu = proc_cpu_s(proxy.pid) - cpu0
    finally:
        proxy.terminate()
        proxy.wait(30)
    refused = [t for k, t in closed_at if k == "refused"]
    closed = sorted(t for k, t in closed_at if k == "closed")
    ok = [t for good, t in honest_results if good]
    return {
        "attack": kind,
        "connections": args.connections,
        "closed_at_once": sum(1 for t in closed if t < 2.0) + len(refused),
        "held_then_closed": sum(1 for t in closed if t >= 2.0),
        "held_close_s_median": round(closed[len(closed) // 2], 1) if closed else None,
        "held_close_s_max": round(closed[-1], 1) if closed else None,
        "honest_ok": f"{len(ok)}/{len(honest_results)}",
        "honest_latency_s_max": round(max(ok), 3) if ok else None,
        "proxy_cpu_s": round(cpu, 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=75, help="seconds each attack runs at most")
    ap.add_argument("--binary", default="target/release/distill-guard")
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    mock = start([args.binary, "mock-upstream", "--listen", "127.0.0.1:0"])
    up = read_until(mock.stdout, r"listening on http://([0-9.:]+)", time.time() + 20).group(1)
    tmp = tempfile.mkdtemp()
    try:
        for kind in ATTACKS:
            if args.only and kind != args.only:
                continue
            print(json.dumps(run_one(args, up, kind, tmp)), flush=True)
    finally:
        mock.terminate()
        mock.wait(30)


if __name__ == "__main__":
    main()
