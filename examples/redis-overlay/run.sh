#!/usr/bin/env bash
# Redis on the overlay, unmodified: redis-server on node db-0, redis-cli and
# redis-benchmark on node bench-0 reaching it by name. Everything runs inside
# a fresh network namespace with only loopback (nothing can leave the machine).
set -euo pipefail
if [ "${BOXER_IN_NAMESPACE:-}" != 1 ]; then
    root=$(cd "$(dirname "$0")/../.." && pwd)
    cargo build --quiet --manifest-path "$root/Cargo.toml" -p boxer -p boxer-runtime -p rendezvous-server -p boxer-shim
    if [ "$(id -u)" = 0 ]; then ns=(unshare --net); else ns=(unshare --user --map-root-user --net); fi
    exec env BOXER_IN_NAMESPACE=1 BOXER_ROOT="$root" "${ns[@]}" bash "$0" "$@"
fi
ip link set lo up
bin="$BOXER_ROOT/target/debug"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/rendezvous-server" --listen 127.0.0.1:0 --state-dir "$work/rdv" >"$work/rdv.out" 2>"$work/rdv.log" &
pids+=($!)
for _ in $(seq 50); do grep -q '^admin token:' "$work/rdv.out" 2>/dev/null && break; sleep 0.1; done
export BOXER_RENDEZVOUS=$(awk '/^listening:/{print $2}' "$work/rdv.out")
export BOXER_FINGERPRINT=$(awk '/^fingerprint:/{print $2}' "$work/rdv.out")
export BOXER_CLUSTER=redis
admin=$(awk '/^admin token:/{print $3}' "$work/rdv.out")
export BOXER_JOIN_TOKEN=$("$bin/boxer" cluster create redis --admin-token "$admin" | awk '/^join token:/{print $3}')

"$bin/boxer-runtime" --service db -- redis-server --port 6379 --protected-mode no --save "" --appendonly no \
    >"$work/db.out" 2>"$work/db.log" &
pids+=($!)
for _ in $(seq 100); do "$bin/boxer" members | grep -q '6379' && break; sleep 0.1; done
"$bin/boxer" members
echo
"$bin/boxer-runtime" --service bench -- sh -c \
    'echo "hostname: $(hostname)"; getent hosts db-0; redis-cli -h db-0 ping; redis-benchmark -h db-0 -q -n 20000 -t set,get' \
    2>"$work/bench.log"
