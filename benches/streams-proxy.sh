#!/usr/bin/env bash
# PROXY_CMD for ../shared/bench/streams.sh: peers-proxy.sh with the per-address
# connection share off (every stream comes from 127.0.0.1; the default share of
# 512 would close the rest). Build first: cargo build --release
#
#   PROXY_CMD=$PWD/benches/streams-proxy.sh STREAMS=2000 ../shared/bench/streams.sh
#
# DG_BIN and DG_EXTRA_TOML as for peers-proxy.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DG_EXTRA_TOML="[limits]
max_connections_per_address = 0
max_connections = $((${BENCH_STREAMS:-2000} * 2 + 256))
${DG_EXTRA_TOML:-}"
exec "$HERE/peers-proxy.sh"
