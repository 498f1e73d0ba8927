#!/usr/bin/env bash
# ../shared/bench/peers.sh with the prompt2k scenario's prompt at PROMPT_BYTES
# (default 2048, the harness's own) instead of 2 KB: for issue 18's "how cost
# grows" table (prompts of 0.5 / 2 / 32 KB). The harness is copied to a scratch
# directory and its request script's one prompt-length constant replaced; every
# other line, peer and knob is the shared harness's.
#
#   PROMPT_BYTES=32768 PROXY_CMD=$PWD/benches/peers-proxy.sh NKEYS=20000 benches/peers-sized.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED_BENCH:-$HERE/../../shared/bench}
[[ -f $SHARED/peers.sh && -f $SHARED/messages.lua ]] || { echo "peers-sized.sh: no harness at $SHARED" >&2; exit 1; }
BYTES=${PROMPT_BYTES:-2048}
[[ $BYTES =~ ^[0-9]+$ && $BYTES -ge 64 && $BYTES -le 1048576 ]] || { echo "peers-sized.sh: PROMPT_BYTES must be 64..1048576" >&2; exit 1; }
COPY=$(mktemp -d)
trap 'rm -rf "$COPY"' EXIT
cp -r "$SHARED"/. "$COPY"/
grep -q '^  while n < 2048 do$' "$COPY/messages.lua" || { echo "peers-sized.sh: the harness's prompt loop changed; update me" >&2; exit 1; }
sed -i "s/^  while n < 2048 do\$/  while n < $BYTES do/" "$COPY/messages.lua"
SCENARIO=prompt2k bash "$COPY/peers.sh"
