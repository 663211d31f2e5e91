#!/usr/bin/env bash
# Take out what must be per device or is only build litter, then prove it is gone: no SSH host
# keys, no machine id, no agent identity or credentials, no package caches.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

rm -f "$ROOTFS"/etc/ssh/ssh_host_*
: > "$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/var/lib/dbus/machine-id" "$ROOTFS/var/lib/systemd/random-seed" "$ROOTFS/var/lib/systemd/credential.secret"
rm -f "$ROOTFS/usr/sbin/policy-rc.d"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOTFS/etc/resolv.conf"
rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
rm -rf "$ROOTFS"/var/log/* "$ROOTFS"/var/tmp/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.ansible "$ROOTFS"/root/.cache
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
# Documentation goes, the copyright notices stay.
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete

problems=()
found=$(find "$ROOTFS/etc/ssh" -name 'ssh_host_*')
[ -z "$found" ] || problems+=("SSH host keys in the image: $found")
[ ! -s "$ROOTFS/etc/machine-id" ] || problems+=("/etc/machine-id is not empty")
for f in config.toml mqtt-password audit-key tls; do
  [ ! -e "$ROOTFS/etc/edge-agent/$f" ] || problems+=("/etc/edge-agent/$f is in the image")
done
found=$(grep -rlE -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' "$ROOTFS/etc" "$ROOTFS/root" "$ROOTFS/var/lib" \
  "$ROOTFS/home" "$ROOTFS/data" 2>/dev/null || true)
[ -z "$found" ] || problems+=("private keys in the image: $found")
if [ ${#problems[@]} -gt 0 ]; then
  printf '%s\n' "${problems[@]}" >&2
  die "the image would carry per-device secrets"
fi
# shellcheck disable=SC2016  # dpkg-query's own format, not the shell's
in_chroot dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' > "$OUT/packages-$ARCH.txt"
log "rootfs: $(du -sh "$ROOTFS" | cut -f1), $(wc -l < "$OUT/packages-$ARCH.txt") packages (packages-$ARCH.txt)"
