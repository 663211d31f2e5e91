#!/usr/bin/env bash
# A minimal Debian (minbase, no recommends) with what every target needs: systemd as init,
# networking, SSH for technicians, Python for the agent and for Ansible.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

mirror=$(debian_mirror)
packages=(
  systemd systemd-sysv udev dbus kmod
  systemd-resolved systemd-timesyncd iproute2 ca-certificates tzdata
  openssh-server
  python3 python3-venv
  e2fsprogs fdisk procps less
)
include=$(IFS=,; echo "${packages[*]}")
chroot_unmount
rm -rf --one-file-system "$ROOTFS"
mkdir -p "$ROOTFS"
if [ "$(dpkg --print-architecture)" = "$ARCH" ]; then
  debootstrap --variant=minbase --arch="$ARCH" --include="$include" "$SUITE" "$ROOTFS" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
else
  # Foreign architecture: unpack here, configure inside the rootfs through qemu-user (binfmt).
  debootstrap --foreign --variant=minbase --arch="$ARCH" --include="$include" "$SUITE" "$ROOTFS" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap (first stage) failed"; }
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap (second stage) failed"; }
fi

# The image's package sources; non-free-firmware carries the Raspberry Pi boot firmware.
cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main non-free-firmware
deb $mirror $SUITE-updates main non-free-firmware
SOURCES
security=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -n "$security" ]; then
  echo "deb $security $SUITE-security main non-free-firmware" >> "$ROOTFS/etc/apt/sources.list"
fi
cat > "$ROOTFS/etc/apt/apt.conf.d/90edge-minimal" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
# No service may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

chroot_mount
trap chroot_unmount EXIT
chroot_apt update >/dev/null
chroot_apt dist-upgrade >/dev/null
log "rootfs: $(du -sh --exclude=proc --exclude=sys --exclude=dev "$ROOTFS" | cut -f1)"
