#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/peers.sh: writes a distill-guard config from the
# variables peers.sh passes (PROXY_LISTEN, PROXY_UPSTREAM, BENCH_WORKERS, BENCH_TMP)
# and execs the release binary. Build first: cargo build --release
#
#   PROXY_CMD=$PWD/benches/peers-proxy.sh SCENARIO=messages ROUNDS=3 ../shared/bench/peers.sh
#
# DG_BIN overrides the binary; DG_EXTRA_TOML is appended to the config (to bench
# policy variants, e.g. limits on); DG_ADMIN sets the admin address (default: a
# free port), e.g. to read /admin/decisions during a run: whether the bench's
# traffic is flagged changes the work per request (BENCHMARKS.md, "Detection
# lines in shadow mode").
set -euo pipefail
: "${PROXY_LISTEN:?run me through peers.sh}" "${PROXY_UPSTREAM:?run me through peers.sh}" "${BENCH_TMP:?run me through peers.sh}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${DG_BIN:-$HERE/../target/release/distill-guard}
[[ -x $BIN ]] || { echo "peers-proxy.sh: $BIN missing: run cargo build --release" >&2; exit 1; }
cat >"$BENCH_TMP/distill-guard.toml" <<TOML
[[listener]]
address = "$PROXY_LISTEN"

[upstream]
url = "$PROXY_UPSTREAM"

[server]
workers = ${BENCH_WORKERS:-0}
shutdown_grace_ms = 1000

[logging]
level = "warn"

[admin]
address = "${DG_ADMIN:-127.0.0.1:0}"
watch_config = false
${DG_EXTRA_TOML:-}
TOML
exec "$BIN" serve --config "$BENCH_TMP/distill-guard.toml"
