#!/usr/bin/env bash
# Debian's kernel and initramfs, plus the boot firmware for the target:
#   amd64  linux-image-amd64; systemd-boot's EFI binary (SYSLINUX for BIOS comes from the host)
#   arm64  linux-image-arm64 and raspi-firmware (Raspberry Pi 4/5 boot files, DTBs, config.txt)
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

chroot_mount
trap chroot_unmount EXIT

# The initramfs finds the root by its label; keep it generic so any x86 board or Pi boots it.
mkdir -p "$ROOTFS/etc/initramfs-tools/conf.d"
echo "MODULES=most" > "$ROOTFS/etc/initramfs-tools/conf.d/edge-gateway.conf"

case "$ARCH" in
  amd64)
    chroot_apt install linux-image-amd64 systemd-boot-efi >"$WORK/kernel.log" 2>&1 ||
      { tail -n 30 "$WORK/kernel.log" >&2; die "kernel install failed"; }
    ;;
  arm64)
    # raspi-firmware's kernel hook writes the Pi's boot partition into /boot/firmware; its root=
    # and consoles come from /etc/default/raspi-firmware.
    mkdir -p "$ROOTFS/boot/firmware" "$ROOTFS/etc/default"
    cat > "$ROOTFS/etc/default/raspi-firmware" <<'DEFAULTS'
# Written by the edge gateway image build.
ROOTPART=LABEL=edge-root
CONSOLES="serial0,115200 tty1"
DEFAULTS
    chroot_apt install linux-image-arm64 raspi-firmware >"$WORK/kernel.log" 2>&1 ||
      { tail -n 30 "$WORK/kernel.log" >&2; die "kernel install failed"; }
    ;;
esac
kernel=$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)
initrd=$(find "$ROOTFS/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then die "no kernel or initrd under /boot after the install"; fi
log "kernel $(basename "$kernel"), initrd $(du -h "$initrd" | cut -f1)"
