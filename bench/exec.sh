#!/usr/bin/env bash
# `sockctl exec` against OpenSSH on loopback, on the same machine and run:
#   - latency: wall time of `exec -- true` vs `ssh HOST true`, each a new
#     connection and login (median of RUNS runs);
#   - throughput: `exec -- cat FILE > /dev/null` vs `ssh HOST cat FILE`
#     for a SIZE_MIB file.
# sshd gets its own throwaway config, host key and authorized key in a
# temporary directory and listens on an ephemeral 127.0.0.1 port; sockd runs
# `--dev` from a release build. Needs root (sshd); installs openssh-server
# with apt-get if sshd is missing.
# Usage: bench/exec.sh   (env: RUNS=20 SIZE_MIB=1024 THROUGHPUT_RUNS=3; figures: docs/EXEC.md)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
SIZE_MIB=${SIZE_MIB:-1024}

if [ "$(id -u)" != 0 ]; then
    echo "bench/exec.sh: run as root (it starts sshd)" >&2
    exit 1
fi
SSHD=$(command -v sshd || true)
[ -z "$SSHD" ] && [ -x /usr/sbin/sshd ] && SSHD=/usr/sbin/sshd
if [ -z "$SSHD" ] || ! command -v ssh >/dev/null; then
    echo "== installing openssh-server and openssh-client"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
    SSHD=/usr/sbin/sshd
fi

echo "== building release binaries"
cargo build --release -q -p sockd -p sockctl -p sockd-exec

dir=$(mktemp -d /tmp/sockd-exec-bench.XXXXXX)
# shellcheck source=bench/lib/sshd.sh
. bench/lib/sshd.sh
start_sshd_and_sockd
SOCKCTL=target/release/sockctl
$SOCKCTL exec -- true || { echo "sockctl exec does not work:"; cat "$dir/sockd.log"; exit 1; }
"${SSH[@]}" true || { echo "ssh does not work:"; cat "$dir/ssh/sshd.log"; exit 1; }

now_ns() { date +%s%N; }
# median wall time in microseconds of RUNS runs of "$@"
median_us() {
    local times=() t0 t1
    for _ in $(seq "$RUNS"); do
        t0=$(now_ns); "$@" >/dev/null; t1=$(now_ns)
        times+=($(( (t1 - t0) / 1000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'
}

# Other work on the machine moves every figure: say how busy it was.
echo "== machine: $(nproc) cores, $(uname -r); $(ssh -V 2>&1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== latency: a new connection, login and \`true\`, median of $RUNS"
"${SSH[@]}" true; $SOCKCTL exec -- true   # warm caches
exec_us=$(median_us $SOCKCTL exec -- true)
ssh_us=$(median_us "${SSH[@]}" true)
calc() { awk "BEGIN { print $1 }"; }
printf '  sockctl exec -- true   %8.2f ms\n' "$(calc "$exec_us / 1000")"
printf '  ssh HOST true          %8.2f ms\n' "$(calc "$ssh_us / 1000")"
printf '  exec is %.1fx faster\n' "$(calc "$ssh_us / $exec_us")"

echo "== throughput: cat of a $SIZE_MIB MiB file to /dev/null, median of ${THROUGHPUT_RUNS:-3}"
file="$dir/big.bin"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$file"
cat "$file" > /dev/null   # in the page cache for both
mibps() {   # MiB/s of "$@" > /dev/null
    local t0 t1
    t0=$(now_ns); "$@" > /dev/null; t1=$(now_ns)
    calc "$SIZE_MIB * 1000000000 / ($t1 - $t0)"
}
# THROUGHPUT_RUNS runs of each, alternating; the median of each side.
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
exec_rates=() ssh_rates=()
for _ in $(seq "${THROUGHPUT_RUNS:-3}"); do
    exec_rates+=("$(mibps $SOCKCTL exec -- cat "$file")")
    ssh_rates+=("$(mibps "${SSH[@]}" cat "$file")")
done
exec_rate=$(printf '%s\n' "${exec_rates[@]}" | median)
ssh_rate=$(printf '%s\n' "${ssh_rates[@]}" | median)
echo "  runs (MiB/s): exec ${exec_rates[*]}; ssh ${ssh_rates[*]}"
printf '  sockctl exec -- cat    %8.0f MiB/s\n' "$exec_rate"
printf '  ssh HOST cat           %8.0f MiB/s\n' "$ssh_rate"
printf '  exec moves %.1fx as much\n' "$(calc "$exec_rate / $ssh_rate")"
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
