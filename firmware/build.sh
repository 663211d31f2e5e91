#!/usr/bin/env bash
# Build the gateway image: Debian rootfs, the agent through the fleet's Ansible role, kernel,
# boot loader, and a three-partition disk image. Each step in steps/ does one thing.
#
#   firmware/build.sh [--arch amd64|arm64] [--out DIR] [--reuse] [--from NN]
#
#   --reuse    keep an image built from the same inputs (firmware/, the role, the agent) as is
#   --from NN  resume at step NN on the work tree of an earlier run (for debugging a step)
#
# Prints the image's path on stdout. Needs root (debootstrap, chroot) and Debian's packages.
set -o errexit -o pipefail -o nounset

FIRMWARE_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$FIRMWARE_DIR/.." && pwd)
ARCH=amd64
OUT=""
REUSE=0
FROM=00
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --reuse) REUSE=1; shift ;;
    --from) FROM=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ARCH" in amd64|arm64) ;; *) echo "build.sh: --arch must be amd64 or arm64, not $ARCH" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "build.sh: run as root (debootstrap and chroot need it)" >&2; exit 2; }
OUT=${OUT:-$FIRMWARE_DIR/.cache/$ARCH}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export FIRMWARE_DIR REPO_DIR ARCH OUT WORK="$OUT/work" ROOTFS="$OUT/work/rootfs"
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

# Everything that ends up in the image; a change in any of it means a new build.
inputs_key() {
  (
    cd "$REPO_DIR"
    find firmware ansible/roles/edge_agent agent pyproject.toml -type f \
      -not -path 'firmware/.cache/*' -not -path firmware/README.md -not -name '*.pyc' \
      -not -path '*/__pycache__/*' -print0 |
      sort -z | xargs -0 sha256sum
    echo "arch=$ARCH"
  ) | sha256sum | cut -c1-16
}

# One build per output folder at a time; a second caller waits, then may reuse the first's image.
exec 9>"$OUT/.lock"
flock 9
# Host tools first, so a reused image can still be booted and checked on a fresh machine.
bash "$FIRMWARE_DIR/steps/00-host-tools.sh"
key=$(inputs_key)
image="$OUT/edge-gateway-$ARCH.img"
if [ "$REUSE" = 1 ] && [ -f "$image" ] && [ "$(cat "$OUT/inputs.key" 2>/dev/null)" = "$key" ]; then
  log "reusing $image (inputs $key unchanged)"
  echo "$image"
  exit 0
fi

trap chroot_unmount EXIT
if [ "$FROM" = 00 ]; then
  chroot_unmount
  # --one-file-system: never into a /dev or /proc left bound by a killed build.
  rm -rf --one-file-system "$WORK" "$OUT/inputs.key"
fi
mkdir -p "$WORK"
: > "$OUT/timings.txt"
total_start=$(date +%s)
for step in "$FIRMWARE_DIR"/steps/[0-9][0-9]-*.sh; do
  name=$(basename "$step" .sh)
  [ "$name" = 00-host-tools ] && continue
  (( 10#${name:0:2} < 10#$FROM )) && continue
  log "step $name"
  t0=$(date +%s)
  bash "$step"
  printf '%-20s %5d s\n' "$name" "$(( $(date +%s) - t0 ))" | tee -a "$OUT/timings.txt" >&2
done
printf '%-20s %5d s\n' total "$(( $(date +%s) - total_start ))" | tee -a "$OUT/timings.txt" >&2
# A resumed build mixes work from two runs: never offered for --reuse.
[ "$FROM" = 00 ] && echo "$key" > "$OUT/inputs.key"
echo "$image"
