#!/usr/bin/env bash
# Check the units as systemd will read them on the gateway: `systemd-analyze verify` (syntax,
# executables, dependencies) and the offline security review, with the agent's exposure capped.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

# Exposure in tenths, as --threshold takes it: 30 is a score of 3.0 ("OK").
AGENT_MAX_EXPOSURE=${AGENT_MAX_EXPOSURE:-30}
units=(edge-agent.service edge-agent-firstboot.service ssh.service)
systemd-analyze verify --man=no --root="$ROOTFS" "${units[@]}" >"$OUT/verify-$ARCH.txt" 2>&1 ||
  { cat "$OUT/verify-$ARCH.txt" >&2; die "systemd-analyze verify found problems in ${units[*]}"; }
[ ! -s "$OUT/verify-$ARCH.txt" ] || { cat "$OUT/verify-$ARCH.txt" >&2; die "systemd-analyze verify warned"; }
for unit in edge-agent.service edge-agent-firstboot.service; do
  systemd-analyze security --offline=yes --root="$ROOTFS" --no-pager "$unit" > "$OUT/security-$unit.txt" 2>&1 || true
  log "$(tail -n1 "$OUT/security-$unit.txt")"
done
systemd-analyze security --offline=yes --root="$ROOTFS" --no-pager --threshold="$AGENT_MAX_EXPOSURE" \
  edge-agent.service >/dev/null 2>&1 ||
  die "edge-agent.service is more exposed than $AGENT_MAX_EXPOSURE/10 (see security-edge-agent.service.txt)"
