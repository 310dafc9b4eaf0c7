# Sourced by bench scripts: a throwaway sshd on a free loopback port, with
# its own config, host key and authorized client key under $dir/ssh.
# Needs: $dir (a scratch directory), $SSHD (the sshd binary), and a bash
# array `pids` of processes the caller's cleanup kills.
# Sets: $port, and SSH_OPTS (ssh/scp/rsync options to log in as root).

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
