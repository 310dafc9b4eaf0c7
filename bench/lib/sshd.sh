# Sourced by bench scripts that put sockd beside OpenSSH: a throwaway sshd
# on a free loopback port, with its own config, host key and authorized
# client key under $dir/ssh, and a release `sockd --dev` in $dir/sockd.
# Needs: $dir (a scratch directory) and $SSHD (the sshd binary).
# start_sshd_and_sockd sets $port, SSH_OPTS (ssh/scp/rsync options to log in
# as root), SSH (the ssh command line) and SOCKCTL_CONFIG, and stops both
# servers and removes $dir when the script exits.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_throwaway_sshd() {
    mkdir -p "$dir/ssh" /run/sshd
    ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/client_key"
    cp "$dir/ssh/client_key.pub" "$dir/ssh/authorized_keys"
    port=$(free_port)
    cat > "$dir/ssh/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh/host_key
AuthorizedKeysFile $dir/ssh/authorized_keys
PidFile $dir/ssh/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
Subsystem sftp internal-sftp
LogLevel ERROR
CONF
    "$SSHD" -f "$dir/ssh/sshd_config" -D -e 2>"$dir/ssh/sshd.log" &
    pids+=($!)
    SSH_OPTS=(-i "$dir/ssh/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
              -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ControlMaster=no -o ControlPath=none)
}

stop_bench_processes() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}

start_sshd_and_sockd() {
    pids=()
    trap stop_bench_processes EXIT
    start_throwaway_sshd
    SSH=(ssh -q -p "$port" "${SSH_OPTS[@]}" root@127.0.0.1)
    target/release/sockd --dev "$dir/sockd" --listen 127.0.0.1:0 2>"$dir/sockd.log" &
    pids+=($!)
    for _ in $(seq 200); do
        [ -s "$dir/sockd/client.toml" ] && "${SSH[@]}" true 2>/dev/null && break
        sleep 0.05
    done
    export SOCKCTL_CONFIG="$dir/sockd/client.toml"
}
