#!/usr/bin/env bash
# A/B of two distill-guard binaries on ../shared/bench/streams.sh, alternated:
# RUNS runs of each (A, B, A, B, ...), each a ROUNDS=2 run of TARGETS="nginx
# proxy", then per build the medians over its rounds of
#   - CPU per event × nginx's, over the whole run and while all streams are open;
#   - the same with each target's CPU per event divided by the upstream's in
#     its run: the upstream does the same Python work behind every target, so
#     this takes out the machine's speed at the time (on this shared machine
#     nginx's own cost moved 6 % between two sets of runs; BENCHMARKS.md,
#     "Where a stream's time goes beside nginx's");
#   - the proxy's own µs per event and KiB per open stream.
#
#   benches/streams-ab.sh <binary A> <binary B>
#
# Knobs (env): RUNS=3, STREAMS=2000, OUT=<dir for the raw output; default a
# new temporary one>. RUNS=0 with the OUT of an earlier A/B reports it again.
# DG_EXTRA_TOML is passed on. One run takes about three minutes, so the
# default takes about twenty. Build both binaries first and copy them aside
# (e.g. the base from a `git worktree`); do not compile while it runs.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
A=${1:?usage: streams-ab.sh <binary A> <binary B>}
B=${2:?usage: streams-ab.sh <binary A> <binary B>}
RUNS=${RUNS:-3}
OUT=${OUT:-$(mktemp -d /tmp/streams-ab.XXXXXX)}
for bin in "$A" "$B"; do
    [[ -x $bin ]] || { echo "streams-ab.sh: $bin is not an executable" >&2; exit 1; }
done
mkdir -p "$OUT"
for i in $(seq 1 "$RUNS"); do
    for tag in A B; do
        if [[ $tag == A ]]; then bin=$A; else bin=$B; fi
        echo "streams-ab.sh: run $i of $RUNS, $tag ($bin)" >&2
        DG_BIN=$bin PROXY_CMD=$HERE/streams-proxy.sh STREAMS=${STREAMS:-2000} ROUNDS=2 \
            TARGETS="nginx proxy" RESULTS_DIR=$OUT/$tag-$i \
            "$HERE/../../shared/bench/streams.sh" >"$OUT/$tag-$i.log" 2>&1 ||
            { echo "streams-ab.sh: the run failed; see $OUT/$tag-$i.log" >&2; exit 1; }
    done
done
python3 - "$OUT" "$A" "$B" <<'PY'
import glob, re, statistics, sys

out, names = sys.argv[1], {"A": sys.argv[2], "B": sys.argv[3]}

def rounds(report):
    """(nginx row, proxy row) per round of one streams.sh report."""
    rows = {}
    for line in open(report).read().split("mean over rounds")[0].splitlines():
        m = re.match(r"^(nginx|proxy)\s+(\d+)\s+\d+/\d+\s+(.*)$", line)
        if m:
            v = m.group(3).split()
            # ttfe50 ttfe99 +p50 +p99 gap99 idleMiB dRSSMiB KiB/str us/ev holdus up-us ...
            rows[(m.group(1), m.group(2))] = dict(
                kib=float(v[7]), us=float(v[8]), hold=float(v[9]), up=float(v[10]))
    return [(rows[("nginx", r)], rows[("proxy", r)])
            for r in sorted({r for _, r in rows}) if ("nginx", r) in rows and ("proxy", r) in rows]

for tag in ("A", "B"):
    rs = [x for f in sorted(glob.glob(f"{out}/{tag}-*/report.txt")) for x in rounds(f)]
    if not rs:
        print(f"{tag}: no complete round (see {out}/{tag}-*.log)")
        continue
    med = lambda f: statistics.median(f(n, p) for n, p in rs)
    per_round = " ".join(f"{p['us'] / n['us']:.3f}" for n, p in rs)
    print(f"{tag} {names[tag]}: {len(rs)} rounds")
    print(f"  us/event x nginx, whole run   {med(lambda n, p: p['us'] / n['us']):.3f}  [{per_round}]")
    print(f"  us/event x nginx, all open    {med(lambda n, p: p['hold'] / n['hold']):.3f}")
    print(f"  the same over the upstream's  {med(lambda n, p: (p['us'] / p['up']) / (n['us'] / n['up'])):.3f}"
          f" / {med(lambda n, p: (p['hold'] / p['up']) / (n['hold'] / n['up'])):.3f}")
    print(f"  proxy us/event, whole / open  {med(lambda n, p: p['us']):.1f} / {med(lambda n, p: p['hold']):.1f}"
          f"   nginx's {med(lambda n, p: n['us']):.1f} / {med(lambda n, p: n['hold']):.1f}")
    print(f"  proxy KiB per open stream     {med(lambda n, p: p['kib']):.2f}")
print(f"raw output: {out}")
PY
