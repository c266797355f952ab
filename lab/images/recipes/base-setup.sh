#!/bin/sh
# Runs inside the base root filesystem (chroot) once, while the image is baked.
# Nothing machine-specific may stay in the image: host keys, machine-id and the login key are
# created per machine at boot by lab-firstboot from the kernel command line.
set -eu

cat > /etc/fstab <<'FSTAB'
/dev/vda  /  ext4  defaults,noatime  0  1
FSTAB

cat > /etc/network/interfaces <<'IFACES'
# eth0: management network (Vagrant's SSH, libvirt DHCP). The lab network is written by
# lab-firstboot into interfaces.d from the kernel command line.
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp

source /etc/network/interfaces.d/*
IFACES

# The lab's resolver is the service box, set by lab-firstboot: DHCP on the management
# network must not overwrite it.
mkdir -p /etc/dhcp/dhclient-enter-hooks.d
cat > /etc/dhcp/dhclient-enter-hooks.d/lab-keep-resolv-conf <<'HOOK'
make_resolv_conf() { :; }
HOOK

printf 'APT::Install-Recommends "0";\nAPT::Install-Suggests "0";\n' > /etc/apt/apt.conf.d/90lab
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d

mkdir -p /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/lab.conf <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD

install -m 0755 /tmp/lab-recipe/lab-firstboot /usr/local/sbin/lab-firstboot
install -m 0644 /tmp/lab-recipe/lab-firstboot.service /etc/systemd/system/lab-firstboot.service
systemctl enable lab-firstboot.service

# Units that would only burn CPU in a TCG guest (several machines booting on two host
# cores): timers of a networked desktop, e2scrub's boot-time reap (no LVM snapshots of ext4
# here), binfmt registration, LVM's dmeventd monitoring (Ganeti's plain LVs are linear).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer \
        e2scrub_reap.service systemd-binfmt.service lvm2-monitor.service; do
    systemctl mask "$unit" 2>/dev/null || true
done
systemctl set-default multi-user.target

# ifupdown-pre waits for udev to settle every device before networking starts: under TCG
# that is 20 s on the path to SSH of every boot, for interfaces whose names are fixed
# (net.ifnames=0). Networking needs only its NICs to exist: wait for those.
mkdir -p /etc/systemd/system/ifupdown-pre.service.d
cat > /etc/systemd/system/ifupdown-pre.service.d/lab.conf <<'UNIT'
[Unit]
# lab-firstboot writes the lab network's interfaces first.
After=lab-firstboot.service

[Service]
ExecStart=
ExecStart=/usr/local/sbin/lab-wait-nics
UNIT
install -m 0755 /tmp/lab-recipe/lab-wait-nics /usr/local/sbin/lab-wait-nics
# A serial console is the lab's log of last resort; keep it quiet but present.
systemctl enable serial-getty@ttyS0.service 2>/dev/null || true

passwd -l root
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo localhost > /etc/hostname
