#!/bin/sh
# Runs inside the service root filesystem (chroot) after its packages are installed.
set -eu

# sharedfile storage for every hypervisor; root must keep ownership (Ganeti runs noded as root).
mkdir -p /srv/ganeti-shared /srv/tftp
cat > /etc/exports <<'EXPORTS'
/srv/ganeti-shared  *(rw,sync,no_root_squash,no_subtree_check,insecure)
EXPORTS

# Local APT repository: downloaded .debs and a flat index, served over HTTP on port 80.
mkdir -p /srv/repo
cd /srv/repo
echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/lab-backports.list
apt-get update -qq
grep -v '^#' /tmp/lab-recipe/repo.packages | grep -v '^$' | while read -r spec; do
    apt-get download -qq "$spec"
done
apt-ftparchive packages . > Packages
gzip -9k Packages
apt-ftparchive release . > Release
rm -f /etc/apt/sources.list.d/lab-backports.list
rm -f /var/lib/apt/lists/*bookworm-backports*

cat > /etc/systemd/system/lab-repo.service <<'UNIT'
[Unit]
Description=ganeti-lab: local APT repository on port 80
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 -m http.server 80 --directory /srv/repo
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable lab-repo.service nfs-server.service dnsmasq.service
