#!/bin/sh
# Runs inside the hypervisor root filesystem (chroot) after its packages are installed.
set -eu
# File-based disk templates only work under directories listed here.
mkdir -p /srv/ganeti/file-storage /srv/ganeti/shared-file-storage
cat > /etc/ganeti/file-storage-paths <<'PATHS'
/srv/ganeti/file-storage
/srv/ganeti/shared-file-storage
PATHS
# The lab's volume group is made at bring-up on the machine's own second disk, never baked.
# Ganeti's daemons start at boot (node daemon waits for a cluster).

# The lab's own OS definition (os "lab+lazy" / "lab+eager"): instances with a real ext4
# filesystem and a marker, whose export and import move the disk's bytes unchanged.
os=/usr/share/ganeti/os/lab
mkdir -p "$os"
for step in create export import rename verify; do
    install -m 0755 /tmp/lab-recipe/lab-os "$os/$step"
done
printf '20\n15\n' > "$os/ganeti_api_version"
printf 'lazy\neager\n' > "$os/variants.list"
: > "$os/parameters.list"

# Under emulation (TCG, 1 vCPU per node) a busy node daemon takes longer than Ganeti's 5 s RPC
# connect timeout to finish its TLS handshake, and jobs fail with "Error 28: SSL connection
# timeout" (seen in CI on instance creation and gnt-cluster verify). Every Ganeti the image
# carries gets 30 s; bootstrap logs the value it finds on each cluster's master.
for constants in /usr/share/ganeti/[0-9]*/ganeti/_constants.py; do
    # 3.0 ships /usr/share/ganeti/2.16 with only a version helper: no constants there.
    [ -L "${constants%/ganeti/_constants.py}" ] && continue
    grep -qx 'RPC_CONNECT_TIMEOUT = 5' "$constants" || {
        echo "$constants: no 'RPC_CONNECT_TIMEOUT = 5' line to raise" >&2; exit 1; }
    sed -i 's/^RPC_CONNECT_TIMEOUT = 5$/RPC_CONNECT_TIMEOUT = 30/' "$constants"
    python3 -m py_compile "$constants"
done
# The same for a disk's import/export daemon (instance moves, exports, imports): Ganeti gives
# it 10 s to write its first status and to listen, and under emulation two transfers at once
# failed there ("Disk 0 failed to send data: Didn't become ready after 10 seconds"). Every
# Ganeti the image carries gets 60 s; bootstrap logs the value it finds.
for transfer in /usr/share/ganeti/[0-9]*/ganeti/masterd/instance.py; do
    [ -L "${transfer%/ganeti/masterd/instance.py}" ] && continue
    for name in DEFAULT_READY_TIMEOUT DEFAULT_LISTEN_TIMEOUT; do
        grep -qx "  $name = 10" "$transfer" || {
            echo "$transfer: no '  $name = 10' line to raise" >&2; exit 1; }
        sed -i "s/^  $name = 10\$/  $name = 60/" "$transfer"
    done
    python3 -m py_compile "$transfer"
done
