#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/streams.sh that also records where the proxy's
# resident memory is: streams-proxy.sh plus a sampler that dumps the proxy's
# /proc/PID/{smaps,smaps_rollup,status} and thread names into $SMAPS_OUT twice,
# "idle" (1 s after start) and "open" (1 s after the proxy holds two fds per
# stream: every stream accepted and its upstream connected).
#
#   SMAPS_OUT=/tmp/smaps PROXY_CMD=$PWD/benches/streams-smaps.sh DG_BIN=<binary> \
#     STREAMS=2000 ../shared/bench/streams.sh
#   awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$0} /^Anonymous:/{if ($2 >= 64) print $2 " kB", m}' /tmp/smaps/smaps.open
#
# The sampler runs in a session of its own (streams.sh sums RSS and CPU over the
# proxy's process group, so it is counted in neither), pinned to the client's
# CPU 0, polling the fd count every 0.2 s for at most 300 s.
set -euo pipefail
: "${SMAPS_OUT:?set SMAPS_OUT to a directory for the dumps}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$SMAPS_OUT"
# shellcheck disable=SC2016 # the sampler's script is expanded by its own bash
setsid taskset -c 0 bash -c '
  pid=$1 n=$2 out=$3
  snap() {
    cat "/proc/$pid/smaps" >"$out/smaps.$1"; cat "/proc/$pid/smaps_rollup" >"$out/rollup.$1"
    cat "/proc/$pid/status" >"$out/status.$1"
    for t in /proc/$pid/task/*; do echo "${t##*/} $(cat "$t/comm")"; done >"$out/threads.$1"
  }
  sleep 1; snap idle
  base=$(ls "/proc/$pid/fd" | wc -l)
  for ((i = 0; i < 1500; i++)); do
    [[ -d /proc/$pid ]] || exit 0
    c=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    # the check stream leaves one pooled upstream connection, reused: allow slack
    if ((c >= base + 2 * n - 16)); then sleep 1; snap open; echo "fds=$c idle_fds=$base" >"$out/when"; exit 0; fi
    sleep 0.2
  done' _ "$$" "${BENCH_STREAMS:-2000}" "$SMAPS_OUT" </dev/null >/dev/null 2>&1 &
exec "$HERE/streams-proxy.sh"
