#!/usr/bin/env bash
# The disk image, built from files without mounting anything (mke2fs -d, mtools):
#   1  EDGE-BOOT  FAT32 256 MiB  kernel, initrd, boot loaders, the seed folder edge-agent/
#   2  edge-root  ext4           the rootfs, mounted read-only
#   3  edge-data  ext4  256 MiB  agent state, config from the seed, journal, host keys; grown to
#                                the end of the disk at first boot
# amd64 boots with SYSLINUX (BIOS) or systemd-boot (UEFI) from partition 1; arm64 with the
# Raspberry Pi firmware from partition 1 (config.txt, cmdline.txt written by raspi-firmware).
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

MIB=$((1024 * 1024))
boot_mib=256
data_mib=256
root_mib=$(( $(du -sxm "$ROOTFS" | cut -f1) * 125 / 100 + 128 ))
parts="$WORK/parts"
rm -rf "$parts"
mkdir -p "$parts"

kernel=$(find "$ROOTFS/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)
initrd=$(find "$ROOTFS/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)
cmdline="root=LABEL=edge-root ro rootwait console=tty0 console=ttyS0,115200 systemd.show_status=auto"

# -- boot partition ----------------------------------------------------------------------------
mkfs.vfat -F 32 -n EDGE-BOOT -C "$parts/boot.img" $((boot_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mdir_p() { local d; for d in "$@"; do mmd -i "$parts/boot.img" "::$d" 2>/dev/null || true; done; }
case "$ARCH" in
  amd64)
    mcopy -i "$parts/boot.img" "$kernel" ::/vmlinuz
    mcopy -i "$parts/boot.img" "$initrd" ::/initrd.img
    # BIOS: SYSLINUX in the FAT's boot sector, the MBR code chains to the active partition.
    mdir_p /syslinux
    syslinux --install --directory /syslinux "$parts/boot.img"
    printf 'DEFAULT edge\nPROMPT 0\nTIMEOUT 0\nLABEL edge\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
      "$cmdline" > "$WORK/syslinux.cfg"
    mcopy -i "$parts/boot.img" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
    # UEFI: systemd-boot at the removable-media path, one entry.
    mdir_p /EFI /EFI/BOOT /loader /loader/entries
    mcopy -i "$parts/boot.img" "$ROOTFS/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
    printf 'default edge.conf\ntimeout 0\n' > "$WORK/loader.conf"
    printf 'title Edge gateway\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" > "$WORK/edge.conf"
    mcopy -i "$parts/boot.img" "$WORK/loader.conf" ::/loader/loader.conf
    mcopy -i "$parts/boot.img" "$WORK/edge.conf" ::/loader/entries/edge.conf
    ;;
  arm64)
    [ -f "$ROOTFS/boot/firmware/config.txt" ] || die "raspi-firmware wrote no config.txt"
    grep -q 'root=LABEL=edge-root' "$ROOTFS/boot/firmware/cmdline.txt" ||
      die "cmdline.txt does not boot LABEL=edge-root: $(cat "$ROOTFS/boot/firmware/cmdline.txt")"
    # raspi-firmware always writes `rw`; the root is mounted read-only from the start (and so
    # checked by fsck in the initramfs).
    cp -r "$ROOTFS/boot/firmware" "$parts/pi"
    sed -i 's/ rw / ro /' "$parts/pi/cmdline.txt"
    mcopy -s -i "$parts/boot.img" "$parts"/pi/* ::/
    ;;
esac
mdir_p /edge-agent
mcopy -i "$parts/boot.img" "$FIRMWARE_DIR/seed/README.txt" ::/edge-agent/README.txt

# -- data partition: the directories fstab binds, owned as the rootfs's users expect ----------
data="$WORK/data"
rm -rf "$data"
uid=$(awk -F: '$1 == "edge-agent" {print $3}' "$ROOTFS/etc/passwd")
gid=$(awk -F: '$1 == "edge-agent" {print $3}' "$ROOTFS/etc/group")
jgid=$(awk -F: '$1 == "systemd-journal" {print $3}' "$ROOTFS/etc/group")
if [ -z "$uid" ] || [ -z "$gid" ]; then die "the rootfs has no edge-agent user"; fi
install -d -m 0755 "$data" "$data/etc" "$data/ssh" "$data/ssh/authorized_keys"
install -d -m 0750 -o "$uid" -g "$gid" "$data/edge-agent"
install -d -m 0750 -o 0 -g "$gid" "$data/etc/edge-agent"
install -d -m 2755 -o 0 -g "${jgid:-0}" "$data/journal"
cp -a "$ROOTFS/var/lib/systemd" "$data/systemd"

# -- file systems and the disk ------------------------------------------------------------------
mkfs.ext4 -q -F -L edge-root -d "$ROOTFS" -E root_owner=0:0 "$parts/root.img" "${root_mib}M"
mkfs.ext4 -q -F -L edge-data -d "$data" -E root_owner=0:0 "$parts/data.img" "${data_mib}M"
rm -rf "$data"

image="$OUT/edge-gateway-$ARCH.img"
boot_start=1
root_start=$((boot_start + boot_mib))
data_start=$((root_start + root_mib))
total_mib=$((data_start + data_mib))
rm -f "$image"
truncate -s "${total_mib}M" "$image"
sfdisk --quiet "$image" <<TABLE
label: dos
unit: sectors
start=$((boot_start * 2048)), size=$((boot_mib * 2048)), type=c, bootable
start=$((root_start * 2048)), size=$((root_mib * 2048)), type=83
start=$((data_start * 2048)), size=$((data_mib * 2048)), type=83
TABLE
dd if="$parts/boot.img" of="$image" bs=$MIB seek=$boot_start conv=notrunc,sparse status=none
dd if="$parts/root.img" of="$image" bs=$MIB seek=$root_start conv=notrunc,sparse status=none
dd if="$parts/data.img" of="$image" bs=$MIB seek=$data_start conv=notrunc,sparse status=none
if [ "$ARCH" = amd64 ]; then
  dd if=/usr/lib/SYSLINUX/mbr.bin of="$image" bs=440 count=1 conv=notrunc status=none
fi
rm -rf "$parts"
(cd "$OUT" && sha256sum "$(basename "$image")" > "$(basename "$image").sha256")
log "image $image: ${total_mib} MiB (boot $boot_mib, root $root_mib, data $data_mib)"
