#!/usr/bin/env bash
# bench/chat.sh: sockd's chat plugin beside mosquitto, in one run, on loopback.
#
# Measures, for sockd (TLS 1.3, every message committed to SQLite before it
# is delivered) and mosquitto (MQTT QoS 0, in memory; over TLS 1.3 like
# sockd, and in plain TCP for reference):
#   one2one  messages/s from one sender to one receiver
#   fanout   deliveries/s into a room (MQTT: topic) of MEMBERS receivers
#   latency  p50/p99 send-to-receive time, one message at a time, with IDLE
#            other clients connected and listening
# The load generator is bench/chat-load (one process, many connections).
#
# Usage: bench/chat.sh            (defaults below; override with the env)
#   ONE2ONE=100000 FANOUT=5000 MEMBERS=100 SAMPLES=10000 IDLE=1000
#   SYNC=full|normal|off   sockd's [plugins.chat] synchronous (default full)
#   TESTS="one2one fanout latency"   which measurements to run (default all)
#   BIN=DIR                use the binaries in DIR (sockd, sockctl,
#                          libsockd_chat.so, chat-load) instead of building
# Needs: mosquitto (apt-get install mosquitto mosquitto-clients), python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ONE2ONE=${ONE2ONE:-100000}
FANOUT=${FANOUT:-5000}
MEMBERS=${MEMBERS:-100}
SAMPLES=${SAMPLES:-10000}
IDLE=${IDLE:-1000}
SYNC=${SYNC:-full}
TESTS=${TESTS:-one2one fanout latency}

command -v mosquitto >/dev/null || { echo "bench/chat.sh: mosquitto is not installed: apt-get install mosquitto mosquitto-clients" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -z "${BIN:-}" ]; then
    echo "== building (release)"
    cargo build --release -q -p sockd -p sockctl -p sockd-chat
    (cd bench/chat-load && cargo build --release -q --target-dir ../../target)
    BIN=$PWD/target/release
fi

DIR=$(mktemp -d /tmp/chat-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- sockd: --dev creates the certificate and the demo user, and keeps this config.
cat > "$DIR/sockd.toml" <<EOF
[server]
listen = ["127.0.0.1:0"]
name = "sockd-bench"
state_dir = "state"
max_connections = 8192
max_connections_per_source = 8192

[tls]
certificate = "cert.pem"
private_key = "key.pem"

[control]
socket = "control.sock"
admin_group = ""

[plugins]
dir = "$BIN"

[plugins.chat]
file = "libsockd_chat.so"
rate_per_sec = 1000000000
burst = 1000000000
synchronous = "$SYNC"
EOF
"$BIN/sockd" --dev "$DIR" --listen 127.0.0.1:0 > "$DIR/sockd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do [ -s "$DIR/client.toml" ] && break; sleep 0.1; done
[ -s "$DIR/client.toml" ] || { cat "$DIR/sockd.log"; exit 1; }
export SOCKCTL_CONFIG=$DIR/client.toml
for user in idle $(seq -f 'r%g' 0 $((MEMBERS - 1))); do
    "$BIN/sockctl" user add "$user" --key-file "$DIR/$user.key" > /dev/null
done

# --- mosquitto: plain and TLS 1.3 listeners with sockd's certificate.
PLAIN=$(free_port)
TLS=$(free_port)
# `user`: as root, mosquitto would otherwise switch to its own user, which
# cannot read the certificate in this private directory.
cat > "$DIR/mosquitto.conf" <<EOF
user $(id -un)
per_listener_settings false
allow_anonymous true
max_queued_messages 0
max_queued_bytes 0
set_tcp_nodelay true
persistence false
log_dest file $DIR/mosquitto.log
listener $PLAIN 127.0.0.1
listener $TLS 127.0.0.1
certfile $DIR/cert.pem
keyfile $DIR/key.pem
tls_version tlsv1.3
EOF
mosquitto -c "$DIR/mosquitto.conf" > /dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$TLS") 2>/dev/null && break; sleep 0.1; done
(exec 3<>"/dev/tcp/127.0.0.1/$TLS") 2>/dev/null || { echo "mosquitto did not start:"; cat "$DIR/mosquitto.log"; exit 1; }

LOAD=$BIN/chat-load
echo "== $(nproc) cores; sockd chat synchronous=$SYNC; $(mosquitto -h | head -1)"
for test in $TESTS; do
    case $test in
    one2one)
        echo "== one sender -> one receiver ($ONE2ONE messages)"
        "$LOAD" sockd "$DIR/client.toml" "$DIR" one2one "$ONE2ONE"
        "$LOAD" mqtt "127.0.0.1:$TLS" tls one2one "$ONE2ONE"
        "$LOAD" mqtt "127.0.0.1:$PLAIN" plain one2one "$ONE2ONE"
        ;;
    fanout)
        echo "== fan-out to $MEMBERS members ($FANOUT messages)"
        "$LOAD" sockd "$DIR/client.toml" "$DIR" fanout "$FANOUT" "$MEMBERS"
        "$LOAD" mqtt "127.0.0.1:$TLS" tls fanout "$FANOUT" "$MEMBERS"
        "$LOAD" mqtt "127.0.0.1:$PLAIN" plain fanout "$FANOUT" "$MEMBERS"
        ;;
    latency)
        echo "== latency, one message at a time ($SAMPLES samples, $IDLE idle clients)"
        "$LOAD" sockd "$DIR/client.toml" "$DIR" latency "$SAMPLES" "$IDLE"
        "$LOAD" mqtt "127.0.0.1:$TLS" tls latency "$SAMPLES" "$IDLE"
        "$LOAD" mqtt "127.0.0.1:$PLAIN" plain latency "$SAMPLES" "$IDLE"
        ;;
    *) echo "bench/chat.sh: unknown test $test (one2one, fanout, latency)" >&2; exit 2 ;;
    esac
done
echo "== history kept: $(sqlite3 "$DIR/state/chat/chat.db" 'select count(*) from messages' 2>/dev/null || echo '?') messages in the chat database"
