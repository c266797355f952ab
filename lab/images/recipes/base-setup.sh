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

# Boot cost under TCG, measured on a default lab (5 machines on 2 host cores): the kernel
# spent 10 s unpacking Debian's 32 MB initramfs (MODULES=most) and its udev 21 s loading
# drivers for USB, IDE and every other device QEMU offers, before the root filesystem was
# mounted. The root disk needs only virtio and ext4: the initramfs carries just those, and
# the NIC driver, so the interfaces exist when networking starts (lab-wait-nics waits for
# them: 30 s when udev loaded the driver only after the switch to the root filesystem).
mkdir -p /etc/initramfs-tools/conf.d
echo MODULES=list > /etc/initramfs-tools/conf.d/lab-modules.conf
printf '%s\n' virtio_pci virtio_blk crc32c_generic ext4 virtio_net \
    > /etc/initramfs-tools/modules
update-initramfs -u -k all
# In the running system: no drivers for devices nobody uses (floppy, PC speaker, PS/2 mouse,
# USB and IDE controllers without devices, the piix4 SMBus, DRM without a display), and no
# mounts or module loads for debugfs, tracefs, hugepages, POSIX message queues, configfs,
# fuse or pstore. The ACPI button and evdev stay: a clean shutdown is the power button,
# handled by logind.
cat > /etc/modprobe.d/lab-unused-devices.conf <<'MODPROBE'
blacklist floppy
blacklist pcspkr
blacklist psmouse
blacklist serio_raw
blacklist uhci_hcd
blacklist ehci_hcd
blacklist ata_piix
blacklist ata_generic
blacklist i2c_piix4
blacklist drm
blacklist qemu_fw_cfg
MODPROBE
for unit in sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
        dev-mqueue.mount sys-kernel-config.mount sys-fs-fuse-connections.mount \
        modprobe@drm.service modprobe@efi_pstore.service modprobe@configfs.service \
        modprobe@fuse.service systemd-pstore.service dpkg-db-backup.timer getty@tty1.service; do
    systemctl mask "$unit"
done

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
