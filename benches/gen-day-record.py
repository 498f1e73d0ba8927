#!/usr/bin/env python3
"""Write a synthetic day of traffic as a traffic record (docs/traffic-record.md) for
timing `distill-guard replay`: 25,000 accounts, 2,000,000 lines over 24 h. 2,000 of the
accounts are a crude hydra (one JA4, 8 addresses, 6 prompt templates, an elicitation
phrase hit, max_tokens pinned); the rest have random fingerprints, networks and prompts.
This is a load generator for the replay benchmark, not the scenario simulator.

    python3 benches/gen-day-record.py /tmp/day.jsonl [LINES]
"""
import json
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/day.jsonl"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000_000
random.seed(7)
t0 = 1_764_000_000_000
accounts = [f"{random.getrandbits(64):016x}" for _ in range(25_000)]
hydra = set(accounts[:2_000])
templates = [[f"{random.getrandbits(64):016x}" for _ in range(16)] for _ in range(6)]
with open(out, "w") as f:
    for i in range(n):
        a = random.choice(accounts)
        if a in hydra:
            h = int(a, 16)
            keys, ja4, prefix = templates[h % 6], "t13d1516h2_8daaf6152771_e5627efa2ab1", f"203.0.113.{h % 8}/32"
            lists, max_tokens = ["elicitation"], 64_000
        else:
            keys = [f"{random.getrandbits(64):016x}" for _ in range(16)]
            ja4 = f"ja4-{random.randrange(50)}"
            prefix = f"10.{random.randrange(256)}.{random.randrange(256)}.0/24"
            lists, max_tokens = [], 1024
        f.write(json.dumps({
            "v": 1, "t_ms": t0 + i * 86_400_000 // n, "account": a, "ja4": ja4,
            "ip_prefix": prefix, "model": "claude-sonnet-4-5",
            "input_tokens": random.randrange(50, 2000), "max_output_tokens": max_tokens,
            "prompt_keys": keys, "fill_key": f"{random.getrandbits(64):016x}",
            "phrase_lists": lists, "output_tokens": random.randrange(10, 4000),
            "decision": "allow",
        }) + "\n")
