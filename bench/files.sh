#!/usr/bin/env bash
# `sockctl put` / `sockctl get` against scp and rsync over OpenSSH, on the
# same machine and run: one SIZE_MIB random file, up and down, best of RUNS
# runs each, in MB/s (10^6 bytes per second). sockctl's figures include
# everything it does before it reports success: BLAKE3 on both sides, the
# fsync of the file and of its directory, and the rename into place.
#
# sshd gets its own throwaway config, host key and authorized key in a
# temporary directory and listens on an ephemeral 127.0.0.1 port; sockd runs
# `--dev` from a release build. scp is measured with its default cipher and
# with aes128-gcm, and its best is the baseline. All files live under
# BENCH_DIR (default /dev/shm, a tmpfs): on a disk, the fsync that sockctl
# does and scp does not would measure the disk instead of the tools.
# Needs root (sshd); installs openssh-server and rsync with apt-get if
# missing.
# Usage: bench/files.sh   (env: RUNS=3 SIZE_MIB=1024 BENCH_DIR=/dev/shm; figures: docs/FILES.md)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
BENCH_DIR=${BENCH_DIR:-/dev/shm}

if [ "$(id -u)" != 0 ]; then
    echo "bench/files.sh: run as root (it starts sshd)" >&2
    exit 1
fi
SSHD=$(command -v sshd || true)
[ -z "$SSHD" ] && [ -x /usr/sbin/sshd ] && SSHD=/usr/sbin/sshd
if [ -z "$SSHD" ] || ! command -v scp >/dev/null || ! command -v rsync >/dev/null; then
    echo "== installing openssh-server, openssh-client and rsync"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client rsync >/dev/null
    SSHD=/usr/sbin/sshd
fi

echo "== building release binaries"
cargo build --release -q -p sockd -p sockctl -p sockd-files

dir=$(mktemp -d "$BENCH_DIR/sockd-files-bench.XXXXXX")
# shellcheck source=bench/lib/sshd.sh
. bench/lib/sshd.sh
start_sshd_and_sockd
SOCKCTL=$PWD/target/release/sockctl
$SOCKCTL quota >/dev/null || { echo "sockctl quota does not work:"; cat "$dir/sockd.log"; exit 1; }
home="$dir/sockd/state/home/demo"

echo "== $SIZE_MIB MiB of random data in $dir"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$dir/src.bin"
bytes=$(stat -c %s "$dir/src.bin")
mkdir -p "$dir/local"

# Best wall time of RUNS runs of "$@", in seconds; `prepare` runs before each.
best() {
    local prepare=$1; shift
    local best_t=""
    for _ in $(seq "$RUNS"); do
        eval "$prepare"
        local t0 t1 t
        t0=$(date +%s.%N)
        "$@" >/dev/null
        t1=$(date +%s.%N)
        t=$(awk "BEGIN { print $t1 - $t0 }")
        if [ -z "$best_t" ] || awk "BEGIN { exit !($t < $best_t) }"; then best_t=$t; fi
    done
    echo "$best_t"
}
mbps() { awk "BEGIN { printf \"%d\", $bytes / $1 / 1000000 }"; }
ratio() { awk "BEGIN { printf \"%.1f\", $1 / $2 }"; }

# Sets variable $1 to the CPU seconds (user + system) this shell's children
# have used so far; `times` runs in this shell, not in a subshell, to see them.
children_cpu() {
    times >"$dir/times"
    printf -v "$1" '%s' "$(awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%.3f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$dir/times")"
}
# Process CPU seconds (user + system) of PID so far.
process_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# One more run of "$@", reporting the CPU it took in sockctl and in sockd:
# on shared or busy cores this is steadier than the wall time.
cpu_report() {
    local name=$1 prepare=$2; shift 2
    local sockd_pid=${pids[-1]} c0 c1 d0 d1
    eval "$prepare"
    children_cpu c0; d0=$(process_cpu "$sockd_pid")
    "$@" >/dev/null
    children_cpu c1; d1=$(process_cpu "$sockd_pid")
    awk -v n="$name" -v c="$c1" -v c0="$c0" -v d="$d1" -v d0="$d0" \
        'BEGIN { printf "%-26s CPU: sockctl %.2f s + sockd %.2f s = %.2f s\n", n, c - c0, d - d0, c - c0 + d - d0 }'
}

declare -A results
measure() {
    local name=$1 prepare=$2; shift 2
    local t
    t=$(best "$prepare" "$@")
    results[$name]=$(mbps "$t")
    printf '%-26s %8s MB/s  (best %.2f s of %s)\n' "$name" "${results[$name]}" "$t" "$RUNS"
}

echo "== upload (put)"
measure "scp put" "rm -f $dir/scp.bin" \
    scp -q -P "$port" "${SSH_OPTS[@]}" "$dir/src.bin" "root@127.0.0.1:$dir/scp.bin"
measure "scp put (aes128-gcm)" "rm -f $dir/scp.bin" \
    scp -q -P "$port" -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" "$dir/src.bin" "root@127.0.0.1:$dir/scp.bin"
measure "rsync put" "rm -f $dir/rsync.bin" \
    rsync -q --whole-file -e "ssh -p $port ${SSH_OPTS[*]}" "$dir/src.bin" "root@127.0.0.1:$dir/rsync.bin"
measure "sockctl put" "rm -f $home/src.bin" \
    "$SOCKCTL" put -q "$dir/src.bin"
cmp "$dir/src.bin" "$home/src.bin"

cpu_report "sockctl put" "rm -f $home/src.bin" "$SOCKCTL" put -q "$dir/src.bin"

echo "== download (get)"
measure "scp get" "rm -f $dir/local/scp.bin" \
    scp -q -P "$port" "${SSH_OPTS[@]}" "root@127.0.0.1:$dir/src.bin" "$dir/local/scp.bin"
measure "scp get (aes128-gcm)" "rm -f $dir/local/scp.bin" \
    scp -q -P "$port" -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" "root@127.0.0.1:$dir/src.bin" "$dir/local/scp.bin"
measure "rsync get" "rm -f $dir/local/rsync.bin" \
    rsync -q --whole-file -e "ssh -p $port ${SSH_OPTS[*]}" "root@127.0.0.1:$dir/src.bin" "$dir/local/rsync.bin"
measure "sockctl get" "rm -f $dir/local/src.bin" \
    "$SOCKCTL" get -q src.bin "$dir/local/src.bin"
cmp "$dir/src.bin" "$dir/local/src.bin"
cpu_report "sockctl get" "rm -f $dir/local/src.bin" "$SOCKCTL" get -q src.bin "$dir/local/src.bin"

best_of() { [ "$1" -gt "$2" ] && echo "$1" || echo "$2"; }
scp_put=$(best_of "${results[scp put]}" "${results[scp put (aes128-gcm)]}")
scp_get=$(best_of "${results[scp get]}" "${results[scp get (aes128-gcm)]}")
echo "== sockctl vs scp's best"
printf 'put: %s MB/s vs %s MB/s: %sx\n' "${results[sockctl put]}" "$scp_put" "$(ratio "${results[sockctl put]}" "$scp_put")"
printf 'get: %s MB/s vs %s MB/s: %sx\n' "${results[sockctl get]}" "$scp_get" "$(ratio "${results[sockctl get]}" "$scp_get")"
