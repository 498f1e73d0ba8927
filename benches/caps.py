#!/usr/bin/env python3
"""The proxy at its caps: the release binary (jemalloc, as deployed) with the
shipped caps on accounts and on the link index, driven by wrk through
`--rounds` rounds of `--accounts` new accounts each (every request a new API
key, its own informative prompt, a client address from x-forwarded-for behind
a trusted front on loopback). Samples the proxy's resident memory (VmRSS, and
VmHWM, its peak) and the engine's gauges every few seconds, and prints one
line per sample and one per round; the round's line gives wrk's latency
percentiles up to p99.999, where a stall of the whole proxy (every
connection's request waiting on one lock) shows better than in the one
slowest request. What a deployment's memory limit must hold
(deploy/kubernetes/deployment.yaml) comes from this, not from the engine
bench alone.

    cargo build --release
    python3 benches/caps.py --accounts 1200000 --rounds 2
    python3 benches/caps.py --accounts 1200000 --rounds 2 --share 16
    python3 benches/caps.py --accounts 1200000 --rounds 2 --elicit
    python3 benches/caps.py --accounts 13500000 --rounds 1 --round-seconds 1000 \
        --elicit --young --repeat 6      # twice max_tracked, every account kept

`--share k` gives k accounts in a row one prompt and one address, so that
each index key is held by k accounts: entries, not keys, fill the index
(`[cluster] max_index_entries` is what bounds them).

Budgets are raised out of reach and detection runs in shadow, so that every
request is admitted and reaches the engine; the caps themselves are the
shipped defaults unless --max-tracked / --max-index-values say otherwise.
Traffic goes to 127.0.0.1 only; every round stops after its requests or
--round-seconds, whichever comes first (the proxy's request counter says
when a round's requests are in).
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soak import base_config, http_get, metric, metric_sum, start_mock, start_proxy, stop  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def ms(us):
    """wrk's microseconds as milliseconds, or '?' when the line was missing."""
    return f"{int(us) / 1000:.2f}ms" if us is not None else "?"


def raised_budgets():
    """The benches' RAISED budgets (benches/common/mod.rs), one source."""
    with open(os.path.join(HERE, "common", "mod.rs")) as f:
        text = f.read()
    m = re.search(r'RAISED: &str = r#"(.*?)"#;', text, re.S)
    if not m:
        raise SystemExit("caps: RAISED not found in benches/common/mod.rs")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_200_000, help="new accounts per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--round-seconds", type=int, default=400)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--max-tracked", type=int, help="[accounts] max_tracked (default: shipped)")
    ap.add_argument("--max-index-values", type=int, help="[cluster] max_index_values (default: shipped)")
    ap.add_argument("--max-index-entries", type=int, help="[cluster] max_index_entries (default: shipped)")
    ap.add_argument(
        "--share", type=int, default=1,
        help="accounts in a row that share one prompt and address (each index key held by that many)",
    )
    ap.add_argument(
        "--elicit", action="store_true",
        help="every prompt elicits reasoning from one template with the output limit pinned high (a hydra's "
        "shape): every account links, so clusters fill to max_linked_accounts. One request each does not give "
        "an account evidence enough to be kept over max_tracked.",
    )
    ap.add_argument(
        "--young", action="store_true",
        help="the trusted front states every account was created a minute ago (x-account-created)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1,
        help="requests in a row from each account (--accounts counts requests)",
    )
    ap.add_argument("--binary", default="target/release/distill-guard")
    args = ap.parse_args()

    mock, up = start_mock(args.binary)
    accounts = f"[accounts]\nmax_tracked = {args.max_tracked}\n" if args.max_tracked else ""
    index = f"max_index_values = {args.max_index_values}\n" if args.max_index_values else ""
    if args.max_index_entries:
        index += f"max_index_entries = {args.max_index_entries}\n"
    proxy, port, admin = start_proxy(
        args.binary,
        base_config(up)
        + f"""
[identity]
trusted_proxies = ["127.0.0.0/8"]
account_created_header = "x-account-created"
[detection]
mode = "shadow"
{accounts}
[cluster]
{index}
{raised_budgets()}
""",
        "caps",
    )

    def sample(t0, label):
        text = asyncio.run(http_get("127.0.0.1", admin, "/metrics"))
        row = {
            "t": round(time.time() - t0, 1),
            "rss_mb": round(status_kb(proxy.pid, "VmRSS") / 1024, 1),
            "hwm_mb": round(status_kb(proxy.pid, "VmHWM") / 1024, 1),
            "tracked": int(metric(text, "distill_guard_tracked_accounts")),
            "index_values": int(metric(text, "distill_guard_link_index_values")),
            "index_entries": int(metric(text, "distill_guard_link_index_entries")),
            "link_mb": round(metric(text, "distill_guard_link_memory_bytes") / 1e6, 1),
            "behaviour": int(metric(text, "distill_guard_tracked_behaviour_states")),
            "tenure": int(metric(text, "distill_guard_tracked_tenure_accounts")),
            "linked": int(metric(text, "distill_guard_linked_accounts")),
            "kept_over_cap": int(metric(text, "distill_guard_tracked_accounts_kept_over_cap")),
        }
        print(label, json.dumps(row), flush=True)
        return row

    def requests_total():
        text = asyncio.run(http_get("127.0.0.1", admin, "/metrics"))
        return metric_sum(text, "distill_guard_requests_total")

    t0 = time.time()
    sample(t0, "start")
    try:
        for r in range(args.rounds):
            env = dict(
                os.environ,
                CAPS_OFFSET=str(r * 100_000_000),
                CAPS_SHARE=str(args.share),
                CAPS_ELICIT="1" if args.elicit else "0",
                CAPS_YOUNG="1" if args.young else "0",
                CAPS_REPEAT=str(args.repeat),
            )
            target = requests_total() + args.accounts
            wrk = subprocess.Popen(
                [
                    "wrk", "--latency", "-t1", f"-c{args.connections}", f"-d{args.round_seconds}s",
                    "-s", os.path.join(HERE, "caps.lua"), f"http://127.0.0.1:{port}",
                ],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            )
            while wrk.poll() is None:
                time.sleep(args.sample_seconds)
                sample(t0, f"round {r + 1}")
                if requests_total() >= target:
                    wrk.send_signal(signal.SIGINT)  # wrk prints its summary and exits
                    wrk.wait(timeout=30)
            out = wrk.stdout.read().decode(errors="replace")
            reqs = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            errs = re.search(r"Socket errors: (.*)", out)
            lat = dict(re.findall(r"\b(50|99)%\s+(\S+)", out))
            worst = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)
            tail = dict(re.findall(r"\b(p9+)_us=(\d+)", out))
            text = asyncio.run(http_get("127.0.0.1", admin, "/metrics"))
            decisions = {
                d: int(float(v))
                for d, v in re.findall(
                    r'^distill_guard_requests_total\{decision="([^"]+)"\} (\S+)$', text, re.M
                )
            }
            counters = {
                k: int(float(v))
                for k, v in re.findall(r"^(distill_guard_\w*refus\w*(?:\{[^}]*\})?) (\S+)$", text, re.M)
                if float(v) > 0
            }
            row = sample(t0, f"round {r + 1} done")
            print(
                f"round {r + 1}: {reqs.group(0) if reqs else 'no request count'}; "
                f"non-2xx {non2xx.group(1) if non2xx else 0}; "
                f"socket errors: {errs.group(1) if errs else 'none'}; "
                f"rss {row['rss_mb']} MB, peak {row['hwm_mb']} MB, tracked {row['tracked']}; "
                f"latency p50 {lat.get('50')}, p99 {lat.get('99')}, "
                f"p99.9 / p99.99 / p99.999 {' / '.join(ms(tail.get(k)) for k in ('p999', 'p9999', 'p99999'))}, "
                f"max {worst.group(1) if worst else '?'}",
                flush=True,
            )
            print(f"round {r + 1} decisions so far: {json.dumps(decisions)}", flush=True)
            print(f"round {r + 1} counters so far: {json.dumps(counters)}", flush=True)
    finally:
        stop(proxy, mock)


if __name__ == "__main__":
    main()
