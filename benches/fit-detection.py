#!/usr/bin/env python3
"""Fit detection weights and thresholds on the tuning family only.

Coordinate descent over a few keys of the shipped config: for each key in
turn, try each candidate value with the others held, run
`distill-guard simulate --family tuning --seeds N --report json`, keep the
value with the lowest objective. The held-out family is never run here:
report it afterwards with the fitted config.

Objective (lower is better), from the tuning family's median and worst
decile:
  attack served in full after 10 min (median + worst decile)
  + stealth-style served in full (median + worst decile)
  + attack output tokens let out (median)
  + 2 x honest slowed (worst decile)
  + 10 when a hard honest goal is missed (degraded worst decile > 0.5 %,
    refused worst decile > 0.1 %), plus 20 x the excess.

Usage (from the repository root, after `cargo build --release`):
  benches/fit-detection.py [--seeds 32] [--passes 1] [--out fitted.toml] [--binary PATH]
                           [--degraded-cap 0.5]
Prints every evaluation and the fitted values; writes the fitted config.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "distill-guard"
CONFIG = ROOT / "config" / "distill-guard.toml"

# (section, key, candidates). The order is the order of the descent.
SPACE = [
    ("detection.weights", "reasoning_elicitation", [0.15, 0.2, 0.3]),
    ("detection.weights", "template_reuse", [0.05, 0.10, 0.14]),
    ("detection.weights", "stack_churn", [0.0, 0.1, 0.3, 0.5]),
    ("detection.weights", "output_length", [0.0, 0.2, 0.3, 0.4, 0.5]),
    ("detection.weights", "output_ratio", [0.05, 0.10]),
    ("detection.weights", "account_age", [0.0, 0.04, 0.08]),
    ("detection", "cohort_min_raw", [0.4, 0.5, 0.55, 0.6, 2.0]),
    ("detection.thresholds", "degrade_enter", [0.55, 0.62, 0.7]),
]


def set_key(text, section, key, value):
    """Set `key = value` in `[section]` (added at the section's end if absent)."""
    lines = text.split("\n")
    header = f"[{section}]"
    start = next(i for i, l in enumerate(lines) if l.strip() == header)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
        len(lines),
    )
    pat = re.compile(rf"^{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if pat.match(lines[i]):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines)
    # Insert before the trailing blank lines and comments of the section.
    j = end
    while j > start + 1 and (not lines[j - 1].strip() or lines[j - 1].startswith("#")):
        j -= 1
    lines.insert(j, f"{key} = {value}")
    return "\n".join(lines)


def keep_marks_ordered(text, values):
    """Exit marks 0.1 below their enter marks, enter marks non-decreasing."""
    slow = values.get(("detection.thresholds", "slow_enter"))
    degrade = values.get(("detection.thresholds", "degrade_enter"))
    if slow is not None:
        text = set_key(text, "detection.thresholds", "slow_exit", round(slow - 0.1, 3))
    if degrade is not None:
        text = set_key(text, "detection.thresholds", "degrade_exit", round(degrade - 0.1, 3))
    return text


def evaluate(binary, text, seeds):
    # The config names its phrase lists relative to its own directory.
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "signals").symlink_to(CONFIG.parent / "signals")
        path = Path(d) / "distill-guard.toml"
        path.write_text(text)
        out = subprocess.run(
            [binary, "simulate", "--family", "tuning", "--seeds", str(seeds),
             "--config", str(path), "--report", "json"],
            capture_output=True, text=True, check=True,
        ).stdout
    return json.loads(out)


def objective(r, degraded_cap=0.005):
    t = lambda k: (r[k]["median"], r[k]["worst_decile"])
    a, aw = t("attack_served_after_10min")
    s, sw = t("stealth_served_after_10min")
    tok, _ = t("attack_output_tokens_fraction")
    _, slowed = t("legit_slowed_fraction")
    _, degraded = t("legit_degraded_fraction")
    _, refused = t("legit_refused_fraction")
    obj = a + aw + s + sw + tok + 2 * slowed
    excess = max(0.0, degraded - degraded_cap) + max(0.0, refused - 0.001)
    if excess > 0:
        obj += 10 + 20 * excess
    return obj


def summary(r):
    f = lambda k: "{:.2f}/{:.2f}".format(100 * r[k]["median"], 100 * r[k]["worst_decile"])
    return (f"attack {f('attack_served_after_10min')} stealth {f('stealth_served_after_10min')} "
            f"tokens {f('attack_output_tokens_fraction')} degraded {f('legit_degraded_fraction')} "
            f"refused {f('legit_refused_fraction')} slowed {f('legit_slowed_fraction')} %")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "target" / "fitted.toml"))
    ap.add_argument("--binary", default=str(BINARY))
    ap.add_argument("--degraded-cap", type=float, default=0.5,
                    help="honest degraded worst decile (%%) the fit may reach at 1x; at ten times "
                         "the accounts it has read 1.4 to 2 times as much, so 0.25 keeps 10x under the goal")
    args = ap.parse_args()
    base = CONFIG.read_text()
    values = {}

    def render(vals):
        text = base
        for (section, key), v in vals.items():
            text = set_key(text, section, key, v)
        return keep_marks_ordered(text, vals)

    cache = {}

    def score(vals):
        k = tuple(sorted(vals.items()))
        if k not in cache:
            r = evaluate(args.binary, render(vals), args.seeds)
            cache[k] = (objective(r, args.degraded_cap / 100), r)
            shown = ", ".join(f"{key}={v}" for (_, key), v in sorted(vals.items()))
            print(f"{cache[k][0]:8.4f}  {summary(r)}  [{shown}]", flush=True)
        return cache[k][0]

    best = score(values)
    for _ in range(args.passes):
        for section, key, candidates in SPACE:
            for v in candidates:
                trial = dict(values)
                trial[(section, key)] = v
                o = score(trial)
                if o < best - 1e-9:
                    best, values = o, trial
    print("fitted:", ", ".join(f"[{s}] {k} = {v}" for (s, k), v in values.items()))
    print(f"objective {best:.4f}")
    Path(args.out).write_text(render(values))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
