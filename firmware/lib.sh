# Shared helpers for the image build steps; sourced, never run.
# shellcheck shell=bash

set -o errexit -o pipefail -o nounset

FIRMWARE_DIR=${FIRMWARE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
REPO_DIR=${REPO_DIR:-$(cd "$FIRMWARE_DIR/.." && pwd)}
ARCH=${ARCH:-amd64}
SUITE=${SUITE:-bookworm}
OUT=${OUT:-$FIRMWARE_DIR/.cache/$ARCH}
WORK=${WORK:-$OUT/work}
ROOTFS=${ROOTFS:-$WORK/rootfs}

log() { printf '[firmware %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Debian mirror this machine's apt already uses, so the image comes from the same registry.
debian_mirror() {
  if [ -n "${FIRMWARE_MIRROR:-}" ]; then echo "$FIRMWARE_MIRROR"; return; fi
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Kernel file systems for package scripts inside the rootfs; undone by chroot_unmount.
chroot_mount() {
  local d
  for d in proc sys dev dev/pts; do mkdir -p "$ROOTFS/$d"; done
  mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
  mountpoint -q "$ROOTFS/sys" || mount -t sysfs sys "$ROOTFS/sys"
  mountpoint -q "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
  mountpoint -q "$ROOTFS/dev/pts" || mount --bind /dev/pts "$ROOTFS/dev/pts"
  # Name resolution for apt while building; the image's own resolv.conf is set in the cleanup step.
  rm -f "$ROOTFS/etc/resolv.conf"
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
}

chroot_unmount() {
  local d
  for d in dev/pts dev sys proc; do
    if mountpoint -q "$ROOTFS/$d"; then umount -l "$ROOTFS/$d"; fi
  done
}

# apt-get inside the rootfs: no recommends, no questions, no services started (policy-rc.d).
chroot_apt() {
  DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 chroot "$ROOTFS" \
    apt-get -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    --yes --quiet --no-install-recommends "$@"
}

in_chroot() { LC_ALL=C.UTF-8 chroot "$ROOTFS" "$@"; }

# The agent's version as the wheel will carry it.
agent_version() {
  "$REPO_DIR/.venv/bin/python" -c 'import agent; print(agent.__version__)'
}
