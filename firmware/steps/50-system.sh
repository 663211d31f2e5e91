#!/usr/bin/env bash
# Our part of the system: the first-boot unit, drop-ins, fstab, watchdog and journal limits,
# networking and SSH settings (all under firmware/rootfs/), then which units run at boot.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

cp -a --no-preserve=ownership "$FIRMWARE_DIR/rootfs/." "$ROOTFS/"
chmod 0755 "$ROOTFS/usr/local/sbin/edge-agent-firstboot"
# Mount points on the read-only root for the partitions and binds in fstab.
mkdir -p "$ROOTFS/data" "$ROOTFS/boot/firmware" "$ROOTFS/var/lib/edge-agent" "$ROOTFS/etc/edge-agent"

enable=(systemd-networkd.service systemd-resolved.service systemd-timesyncd.service ssh.service
  edge-agent-firstboot.service edge-agent.service)
# Nothing on the gateway may ask questions or update packages on a read-only root.
mask=(systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer
  e2scrub_reap.service systemd-networkd-wait-online@.service)
systemctl --root="$ROOTFS" --quiet enable "${enable[@]}"
systemctl --root="$ROOTFS" --quiet set-default multi-user.target
for unit in "${mask[@]}"; do
  if [ -e "$ROOTFS/lib/systemd/system/$unit" ] || [ -e "$ROOTFS/usr/lib/systemd/system/$unit" ]; then
    systemctl --root="$ROOTFS" --quiet mask "$unit"
  fi
done
log "enabled: ${enable[*]}"
