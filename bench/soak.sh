#!/usr/bin/env bash
# Soak under mixed load: a release sockd of its own (temporary directory,
# limits raised so that they are not what is measured), then sockd-soak
# with CLIENTS clients for DURATION, then the daemon is stopped by its PID.
# Usage: bench/soak.sh [CLIENTS [DURATION [SOAK OPTIONS...]]]
#        bench/soak.sh 500 10m          (the defaults; figures in docs/RELIABILITY.md)
#        bench/soak.sh 50 2m --seed 7 --max-growth 128
# Exit status: sockd-soak's (0: no error and memory within the bound).
# KEEP=1 keeps the directory (daemon log, config, state) for a look after;
# SETTLE (default 40s) is how long after the clients leave the daemon's
# memory is read once more (idle plugin-call threads exit after 30 s).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-500}
duration=${2:-10m}
shift $(($# < 2 ? $# : 2))
cargo build --release -q -p sockd -p sockd-exec -p sockd-files -p sockd-chat -p sockd-soak
dir=$(mktemp -d /tmp/sockd-soak.XXXXXX)
# Every client comes from 127.0.0.1 and has a user of its own: one
# connection each, exec of echo/cat/false, no file quota, chat rate
# limits far above what a client sends. Chat keeps `synchronous = "full"`
# (every accepted message fsynced), as shipped.
cat > "$dir/sockd.toml" <<'TOML'
[server]
listen = ["127.0.0.1:0"]
name = "sockd-soak"
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
on_error = "refuse"
[plugins.exec]
file = "libsockd_exec.so"
[plugins.exec.default]
allow = ["echo", "cat", "false"]
max_concurrent = 8
[plugins.files]
file = "libsockd_files.so"
[plugins.chat]
file = "libsockd_chat.so"
rate_per_sec = 100000
burst = 100000
TOML
# One descriptor per connection, plus pipes of running commands.
ulimit -n "$(ulimit -Hn)"
target/release/sockd --dev "$dir" --listen 127.0.0.1:0 2>"$dir/sockd.log" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
for _ in $(seq 600); do [ -s "$dir/client.toml" ] && break; sleep 0.05; done
if [ ! -s "$dir/client.toml" ]; then
    echo "soak.sh: sockd did not start; its log:" >&2
    cat "$dir/sockd.log" >&2
    exit 1
fi
echo "== $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg); sockd pid $pid"
status=0
target/release/sockd-soak --config "$dir/client.toml" --clients "$clients" \
    --duration "$duration" --pid "$pid" --settle "${SETTLE:-40s}" "$@" || status=$?
if [ -s "$dir/sockd.log" ]; then
    echo "== the daemon logged warnings or errors (first 20 lines):"
    head -20 "$dir/sockd.log"
fi
exit "$status"
