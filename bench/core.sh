#!/usr/bin/env bash
# Benchmarks of the core and the plugin ABI against a release sockd on
# loopback (issues: auth cost, idle memory, plugin call overhead).
# Usage: bench/core.sh   (figures are recorded in docs/BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sockd -p sockd-testkit -p sockbench
dir=$(mktemp -d /tmp/sockd-bench.XXXXXX)
cat > "$dir/sockd.toml" <<'TOML'
[server]
listen = ["127.0.0.1:0"]
state_dir = "state"
max_connections = 10000
max_connections_per_source = 10000
[tls]
certificate = "cert.pem"
private_key = "key.pem"
[log]
level = "warn"
[control]
socket = "control.sock"
admin_group = ""
[plugins]
[plugins.testkit]
file = "libsockd_testkit.so"
TOML
ulimit -n 16384
target/release/sockd --dev "$dir" --listen 127.0.0.1:0 2>"$dir/sockd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 200); do [ -s "$dir/client.toml" ] && break; sleep 0.05; done
bench() { target/release/sockbench --config "$dir/client.toml" "$@"; }
echo "== machine: $(nproc) cores, $(uname -r); sockd pid $pid"
echo "== logins (TLS 1.3, ECDSA P-256 self-signed, key credential)"
bench logins --seconds 30 --concurrency 8 --pid "$pid"
echo "== idle memory"
bench idle --count 1000 --pid "$pid"
echo "== plugin calls beside pings, interleaved: testkit pong (inline, on the connection's task: writes its 8-byte argument back as a PING's payload comes back), whoami-blocking (on a call thread), a refused OPEN"
bench calls --seconds 5 --connections 1 --pid "$pid"
bench calls --seconds 5 --connections 64 --pid "$pid"
echo "== a small real inline command beside pings: testkit whoami (formats user, session, home and peer)"
bench calls --seconds 5 --connections 64 --pid "$pid" --command whoami --blocking-command "" --refused-command ""
