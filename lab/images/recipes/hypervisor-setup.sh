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
