#!/usr/bin/env bash
# The agent's wheel, and a wheelhouse of its dependencies for the target's CPU and Python (3.11,
# bookworm's). Resolved here with this machine's pip configuration (its index, certificates and
# constraints), so the chroot installs offline and needs no pip settings of its own.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

dist="$WORK/dist"
wheelhouse="$WORK/wheelhouse"
rm -rf "$dist" "$wheelhouse"
mkdir -p "$dist" "$wheelhouse"
"$REPO_DIR/.venv/bin/pip" wheel --quiet --no-deps -w "$dist" "$REPO_DIR" 2>"$WORK/pip-wheel.log" ||
  { cat "$WORK/pip-wheel.log" >&2; die "pip wheel failed"; }
wheel=$(find "$dist" -name 'cctv_edge_agent-*.whl' | head -n1)
[ -n "$wheel" ] || die "pip wheel made no cctv_edge_agent wheel in $dist"
version=$(agent_version)
[ "$(basename "$wheel")" = "cctv_edge_agent-$version-py3-none-any.whl" ] ||
  die "wheel $(basename "$wheel") does not carry the source's version $version"

case "$ARCH" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
esac
platforms=()
for minor in 36 35 34 33 32 31 28 27 26 17; do platforms+=(--platform "manylinux_2_${minor}_$machine"); done
platforms+=(--platform "manylinux2014_$machine")
"$REPO_DIR/.venv/bin/pip" download --quiet --dest "$wheelhouse" --only-binary=:all: \
  --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
  "${platforms[@]}" "$wheel" 2>"$WORK/pip-download.log" ||
  { cat "$WORK/pip-download.log" >&2; die "pip could not fetch the dependencies for $machine"; }
rm -f "$wheelhouse/$(basename "$wheel")"
log "wheel $(basename "$wheel"), $(find "$wheelhouse" -name '*.whl' | wc -l) dependency wheels for $machine"
