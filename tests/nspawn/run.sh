#!/bin/bash
# tests/nspawn/run.sh DEB SOCKD_DEBUG_HOOKS — sockd under a real systemd.
#
# Boots systemd as PID 1 in a throw-away container (systemd-nspawn -b:
# this machine's /usr under a writable overlay, a minimal /etc, a copy of
# its dpkg database, a private network with only loopback), installs the package
# with dpkg, and checks: the socket units started by postinst; `systemctl
# start sockd` and is-active; `sockctl status` and `sockctl ping`;
# `systemctl reload sockd` with a live session that survives it; a
# reinstall (upgrade path) that keeps the edited conffile and restarts
# sockd; a removal that keeps configuration, key and users, and a reinstall
# after it that socket-activates sockd again; `systemctl stop sockd` with
# STOPPING=1 received and a clean exit;
# the watchdog killing and restarting a sockd whose runtime is frozen
# (SOCKD_DEBUG_HOOKS, a build with the `debug-hooks` feature, run through a
# drop-in); and a purge that removes the state and the generated key.
#
# Exit status: 0 passed, 77 skipped (the reason is printed: not root, no
# systemd-nspawn, the container does not boot here), anything else failed.
# Run by tests/tests/nspawn.rs, which builds both files first.
set -euo pipefail

skip() {
    echo "SKIP: $*"
    exit 77
}
log() { echo "nspawn: $*"; }

[ $# -eq 2 ] || {
    echo "usage: $0 DEB SOCKD_DEBUG_HOOKS" >&2
    exit 2
}
deb=$(realpath "$1")
debug_sockd=$(realpath "$2")
[ -f "$deb" ] && [ -x "$debug_sockd" ] || {
    echo "$0: $1 or $2 does not exist: build them first (tests/tests/nspawn.rs does)" >&2
    exit 2
}
[ "$(id -u)" = 0 ] || skip "systemd-nspawn needs root (run the tests as root, as CI does)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is missing: apt-get install systemd-container"
command -v nsenter >/dev/null || skip "nsenter is missing: apt-get install util-linux"
[ -x /usr/lib/systemd/systemd ] || skip "no systemd in /usr/lib/systemd to boot"
[ -f /var/lib/dpkg/status ] || skip "not a dpkg-based system: the container reuses this /usr and its dpkg database"

work=$(mktemp -d "${TMPDIR:-/tmp}/sockd-nspawn.XXXXXX")
root="$work/root"
machine="sockd-test-$$"
nspawn_pid=
leader=

# Runs a command inside the container, as root, with a clean environment.
run() {
    nsenter --target "$leader" --all env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 "$@" </dev/null
}

fail() {
    echo "FAIL: $*"
    if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
        echo "--- journalctl -u sockd (container)"
        run journalctl --no-pager -u sockd -u sockd.socket -u sockd-control.socket | tail -n 60 || true
    fi
    echo "--- console (last lines)"
    tail -n 30 "$work/console.log" 2>/dev/null || true
    exit 1
}

cleanup() {
    local status=$?
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # nspawn asks the container's systemd to power off.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn_pid" 2>/dev/null; then
            kill -KILL "$nspawn_pid" 2>/dev/null || true
            [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null || true
        fi
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf "$work" "/run/systemd/nspawn/propagate/$machine"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# Polls CONDITION (a shell command) for up to SECONDS.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until eval "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# --- The container's root: /usr comes from this machine (overlaid), the rest
# is minimal. A set machine-id means "not first boot": no presets run, so
# only the static units of /usr start.
mkdir -p "$root" "$work/usr-upper"
(
    cd "$root"
    mkdir -p etc var/lib var/tmp tmp run proc sys dev root usr opt
    ln -s usr/bin bin
    ln -s usr/sbin sbin
    ln -s usr/lib lib
    [ -d /usr/lib64 ] && ln -s usr/lib64 lib64
    for f in passwd group shadow gshadow nsswitch.conf ld.so.cache ld.so.conf \
        ld.so.conf.d alternatives dpkg login.defs adduser.conf; do
        [ -e "/etc/$f" ] && cp -a "/etc/$f" etc/
    done
    cp /usr/lib/os-release etc/os-release
    tr -d - </proc/sys/kernel/random/uuid >etc/machine-id
    cp -a /var/lib/dpkg var/lib/
)
cp "$deb" "$root/root/sockd.deb"
mkdir -p "$root/opt/sockd-debug"
cp "$debug_sockd" "$root/opt/sockd-debug/sockd-debug-hooks"

# On a systemd host nspawn makes its own scope; elsewhere it stays in ours.
scope=(--register=no)
[ -d /run/systemd/system ] || scope+=(--keep-unit)
log "booting $machine"
systemd-nspawn --quiet --directory="$root" --machine="$machine" "${scope[@]}" \
    --overlay="/usr:$work/usr-upper:/usr" --private-network --console=read-only \
    --boot -- systemd.unit=multi-user.target </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!

# Each stops waiting early if nspawn is gone.
nspawn_alive() { kill -0 "$nspawn_pid" 2>/dev/null; }
find_leader() {
    leader=$(pgrep --parent "$nspawn_pid" | head -n 1 || true)
    [ -n "$leader" ] || ! nspawn_alive
}
booted() {
    nspawn_alive || return 0
    case $(run systemctl is-system-running 2>/dev/null || true) in
    running | degraded) return 0 ;;
    *) return 1 ;;
    esac
}
if ! wait_for 30 find_leader || [ -z "$leader" ] || ! wait_for 60 booted || ! nspawn_alive; then
    echo "--- console"
    tail -n 30 "$work/console.log" || true
    kill -0 "$nspawn_pid" 2>/dev/null || nspawn_pid=
    skip "systemd-nspawn could not boot a container on this machine (console above)"
fi
log "booted: $(run systemctl is-system-running || true)"

# --- Install. Docker-style images ship a policy-rc.d that forbids starting
# services from maintainer scripts; a real system has none.
run rm -f /usr/sbin/policy-rc.d
install_out=$(run dpkg -i /root/sockd.deb 2>&1) || fail "dpkg -i: $install_out"
echo "$install_out" | sed 's/^/  dpkg: /'
pin=$(echo "$install_out" | sed -n 's/^pin = "\(sha256:[0-9a-f]*\)"$/\1/p')
[ -n "$pin" ] || fail "postinst printed no certificate pin"
run getent passwd sockd >/dev/null || fail "postinst created no sockd user"
run getent group sockctl >/dev/null || fail "postinst created no sockctl group"
[ "$(run stat -c %a:%U /etc/sockd/key.pem)" = 600:root ] || fail "key.pem is not root's, mode 0600"
for unit in sockd.socket sockd-control.socket; do
    [ "$(run systemctl is-enabled $unit)" = enabled ] || fail "$unit is not enabled"
    [ "$(run systemctl is-active $unit)" = active ] || fail "$unit was not started by postinst"
done
log "installed: user, group, key, sockets enabled and listening"

# --- Start, status, ping.
run systemctl start sockd || fail "systemctl start sockd"
[ "$(run systemctl is-active sockd)" = active ] || fail "sockd is not active"
status_out=$(run sockctl status) || fail "sockctl status: $status_out"
echo "$status_out" | grep -q "plugins *3:" || fail "sockctl status shows not 3 plugins: $status_out"
add_user() {
    run sockctl user add "$1" --key-file "/root/$1.key" >/dev/null || fail "sockctl user add $1"
    printf 'server = "127.0.0.1:7443"\nuser = "%s"\nkey_file = "%s.key"\npin = "%s"\n' \
        "$1" "$1" "$pin" >"$root/root/$1.toml"
}
add_user alice
add_user bob
ping_out=$(run sockctl --config /root/alice.toml ping) || fail "sockctl ping: $ping_out"
echo "$ping_out" | grep -q "^pong from sockd " || fail "unexpected ping answer: $ping_out"
log "started; status and ping answer: $ping_out"

# --- Reload with a live session: bob waits for one chat message across it.
nsenter --target "$leader" --all env -i PATH=/usr/bin:/bin HOME=/root \
    sockctl --config /root/bob.toml chat read --follow --count 1 </dev/null >"$work/bob.out" 2>&1 &
follower=$!
# The id of bob's session, from the one-line JSON list.
bob_session() { run sockctl sessions --json | tr '}' '\n' | grep '"user":"bob"' | grep -o '"id":[0-9]*' || true; }
session_is_open() { [ -n "$(bob_session)" ]; }
wait_for 20 session_is_open ||
    fail "bob's session did not appear: $(run sockctl sessions --json) / bob: $(cat "$work/bob.out")"
before=$(bob_session)
run sed -i 's/^name = "sockd"$/name = "sockd-reloaded"/' /etc/sockd/sockd.toml
run systemctl reload sockd || fail "systemctl reload sockd"
[ "$(run systemctl is-active sockd)" = active ] || fail "sockd is not active after reload"
run sockctl --config /root/alice.toml ping | grep -q "^pong from sockd-reloaded " ||
    fail "the reload did not apply the new server.name"
[ "$(bob_session)" = "$before" ] || fail "bob's session did not survive the reload"
run sockctl --config /root/alice.toml chat send bob "after the reload" >/dev/null || fail "chat send"
wait "$follower" || fail "bob's chat read ended with status $?: $(cat "$work/bob.out")"
grep -q "after the reload" "$work/bob.out" || fail "bob did not get the message: $(cat "$work/bob.out")"
log "reloaded (new server.name) with bob's session kept: it received a message sent afterwards"

# --- Reinstall (dpkg's upgrade path): the edited conffile stays, sockd restarts.
pid_before=$(run systemctl show -p MainPID --value sockd)
reinstall_out=$(run dpkg -i /root/sockd.deb 2>&1) || fail "dpkg -i (again): $reinstall_out"
run grep -q '^name = "sockd-reloaded"$' /etc/sockd/sockd.toml || fail "the upgrade replaced the edited conffile"
pid_after=$(run systemctl show -p MainPID --value sockd)
[ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] || fail "the upgrade did not restart sockd"
[ "$(run systemctl is-active sockd)" = active ] || fail "sockd is not active after the upgrade"
log "upgraded: conffile kept, sockd restarted (pid $pid_before -> $pid_after)"

# --- Remove, then install again: configuration, key and users survive the
# removal; the units masked by postrm come back.
remove_out=$(run dpkg --remove sockd 2>&1) || fail "dpkg --remove: $remove_out"
for unit in sockd.service sockd.socket sockd-control.socket; do
    [ "$(run systemctl is-active $unit || true)" != active ] || fail "$unit still active after removal"
done
run test ! -e /usr/bin/sockd || fail "removal left /usr/bin/sockd"
run test -e /etc/sockd/key.pem -a -e /etc/sockd/sockd.toml -a -e /var/lib/sockd/users.toml ||
    fail "removal deleted configuration, key or state"
reinstall_out=$(run dpkg -i /root/sockd.deb 2>&1) || fail "dpkg -i after removal: $reinstall_out"
for unit in sockd.socket sockd-control.socket; do
    [ "$(run systemctl is-active $unit)" = active ] || fail "$unit not started after reinstall: $reinstall_out"
done
run sockctl --config /root/alice.toml ping >/dev/null || fail "ping after reinstall (socket activation)"
[ "$(run systemctl is-active sockd)" = active ] || fail "the ping did not socket-activate sockd"
log "removed (config, key, users kept) and reinstalled: the ping socket-activated sockd"

# --- Stop: STOPPING=1 reaches systemd (logged at debug level), exit 0.
running=$(run systemctl show -p MainPID --value sockd)
run systemd-analyze set-log-level debug
stop_out=$(run systemctl stop sockd 2>&1) || fail "systemctl stop sockd: $stop_out"
run systemd-analyze set-log-level info
journal=$(run journalctl --no-pager -u sockd)
echo "$journal" | grep -q "Got notification message from PID $running (STOPPING=1" ||
    fail "systemd got no STOPPING=1 from sockd"
[ "$(run systemctl show -p Result --value sockd)" = success ] || fail "stop result is not success"
[ "$(run systemctl show -p ExecMainStatus --value sockd)" = 0 ] || fail "sockd did not exit 0"
log "stopped: STOPPING=1 received, exit status 0, result success"

# --- Watchdog: freeze the runtime of a debug-hooks build; systemd must
# kill it (SIGABRT) and start a new one.
mkdir -p "$root/etc/systemd/system/sockd.service.d"
cat >"$root/etc/systemd/system/sockd.service.d/50-debug-hooks.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/opt/sockd-debug/sockd-debug-hooks --config /etc/sockd/sockd.toml
WatchdogSec=3s
EOF
run systemctl daemon-reload
run systemctl start sockd || fail "start with the debug-hooks drop-in"
frozen=$(run systemctl show -p MainPID --value sockd)
run systemctl kill --kill-who=main --signal=SIGUSR2 sockd
restarted() {
    local pid
    pid=$(run systemctl show -p MainPID --value sockd)
    [ "$pid" != "$frozen" ] && [ "$pid" != 0 ] && [ "$(run systemctl is-active sockd)" = active ]
}
wait_for 60 restarted || fail "the watchdog did not restart the frozen sockd"
journal=$(run journalctl --no-pager -u sockd)
echo "$journal" | grep -q "freezing all" || fail "the debug hook did not freeze the runtime"
echo "$journal" | grep -q "sockd.service: Watchdog timeout" || fail "no watchdog timeout in the journal"
echo "$journal" | grep -q "Killing process $frozen .* with signal SIGABRT" || fail "the frozen sockd was not sent SIGABRT"
[ "$(run systemctl show -p NRestarts --value sockd)" -ge 1 ] || fail "NRestarts did not grow"
run sockctl --config /root/alice.toml ping >/dev/null || fail "ping after the watchdog restart"
log "watchdog: frozen pid $frozen killed with SIGABRT, restarted as $(run systemctl show -p MainPID --value sockd)"

# --- Purge: the daemon stops; state and the generated key go; the user stays.
rm -r "$root/etc/systemd/system/sockd.service.d"
purge_out=$(run dpkg --purge sockd 2>&1) || fail "dpkg --purge: $purge_out"
[ "$(run systemctl is-active sockd || true)" != active ] || fail "sockd still runs after purge"
run test ! -e /var/lib/sockd || fail "purge left /var/lib/sockd"
run test ! -e /etc/sockd || fail "purge left /etc/sockd: $(run ls -la /etc/sockd)"
run getent passwd sockd >/dev/null || fail "purge removed the sockd user (policy: keep it)"
log "purged: daemon stopped, /var/lib/sockd and /etc/sockd gone, user kept"
echo "PASS"
