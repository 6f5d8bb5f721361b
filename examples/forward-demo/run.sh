#!/usr/bin/env bash
# Forward demo: a rendezvous, two runtimes and a web server, all on loopback.
# Node web-0 exposes a local python http.server; node client-0 forwards a
# local port to web-0:PORT over QUIC; curl fetches the page through it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --quiet --manifest-path "$root/Cargo.toml" -p boxer -p boxer-runtime -p rendezvous-server
bin="$root/target/debug"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/rendezvous-server" --listen 127.0.0.1:0 --state-dir "$work/rdv" >"$work/rdv.out" 2>"$work/rdv.log" &
pids+=($!)
for _ in $(seq 50); do grep -q '^admin token:' "$work/rdv.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/rdv.out"
export BOXER_RENDEZVOUS=$(awk '/^listening:/{print $2}' "$work/rdv.out")
export BOXER_FINGERPRINT=$(awk '/^fingerprint:/{print $2}' "$work/rdv.out")
export BOXER_CLUSTER=demo
admin=$(awk '/^admin token:/{print $3}' "$work/rdv.out")
export BOXER_JOIN_TOKEN=$("$bin/boxer" cluster create demo --admin-token "$admin" | awk '/^join token:/{print $3}')

mkdir -p "$work/site" && echo "hello from web-0 through the Boxer overlay" >"$work/site/index.html"
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$work/site" >"$work/http.log" 2>&1 &
pids+=($!)
"$bin/boxer-runtime" --service web --expose 18080 --bind 127.0.0.1:0 2>"$work/web.log" &
pids+=($!)
"$bin/boxer-runtime" --service client --forward 17080=web-0:18080 --bind 127.0.0.1:0 2>"$work/client.log" &
pids+=($!)
sleep 1
echo; "$bin/boxer" members
echo; echo "curl http://127.0.0.1:17080/ (client-0 -> QUIC -> web-0):"
curl -sS --retry 5 --retry-connrefused http://127.0.0.1:17080/
