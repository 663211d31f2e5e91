#!/usr/bin/env bash
# Copy a seed folder into the boot partition (EDGE-BOOT) of an image file or a flashed card,
# without mounting it (mtools):   firmware/seed-image.sh IMAGE|/dev/sdX SEED_DIR
# SEED_DIR holds config.toml and whatever it names (tls/..., mqtt-password), optionally
# authorized_keys; see seed/README.txt. Files already in edge-agent/ are replaced.
set -o errexit -o pipefail -o nounset
[ $# -eq 2 ] || { sed -n '2,5p' "$0" >&2; exit 2; }
target=$1
seed=$2
[ -e "$target" ] || { echo "seed-image.sh: $target does not exist" >&2; exit 2; }
[ -f "$seed/config.toml" ] || { echo "seed-image.sh: $seed has no config.toml" >&2; exit 2; }
start=$(sfdisk --dump "$target" 2>/dev/null | awk -F'[=,]' '/start=/ {gsub(/ /, "", $2); print $2; exit}')
[ -n "$start" ] || { echo "seed-image.sh: $target has no partition table" >&2; exit 2; }
export MTOOLS_SKIP_CHECK=1
fat="$target@@$((start * 512))"
label=$(mlabel -s -i "$fat" :: 2>/dev/null | awk '{print $NF}')
[ "$label" = EDGE-BOOT ] || { echo "seed-image.sh: partition 1 of $target is not EDGE-BOOT (found '$label')" >&2; exit 2; }
mmd -i "$fat" ::/edge-agent 2>/dev/null || true
(cd "$seed" && find . -mindepth 1 -type d -printf '%P\n') | while read -r dir; do
  mmd -i "$fat" "::/edge-agent/$dir" 2>/dev/null || true
done
(cd "$seed" && find . -type f -printf '%P\n') | while read -r file; do
  mcopy -o -i "$fat" "$seed/$file" "::/edge-agent/$file"
done
echo "seeded $target with $(find "$seed" -type f | wc -l) file(s) from $seed" >&2
