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
