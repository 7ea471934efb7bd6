#!/usr/bin/env bash
# Measures the chat example's resident memory per idle connection on loopback.
# Usage: scripts/idle-memory.sh [connections=10000] [hold-seconds=15]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
hold=${2:-15}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build -q --release --example chat --example idle
port=$((20000 + RANDOM % 20000))
PORT=$port ./target/release/examples/chat >/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
before=$(rss)
log=$(mktemp)
./target/release/examples/idle "ws://127.0.0.1:$port" "$n" "$hold" >"$log" &
client=$!
for _ in $(seq 1 600); do grep -q '^open' "$log" && break; sleep 0.1; done
cat "$log"
sleep 3
after=$(rss)
wait $client
rm -f "$log"
echo "connections=$n rss_before_kib=$before rss_after_kib=$after per_connection_bytes=$(( (after - before) * 1024 / n ))"
