#!/usr/bin/env bash
# Host tools the build needs, from Debian's packages; installs only what is missing.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

need=()
want() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || need+=("$2"); }
want debootstrap debootstrap
want mkfs.ext4 e2fsprogs
want mkfs.vfat dosfstools
want mcopy mtools
want sfdisk fdisk
want syslinux syslinux
[ -f /usr/lib/SYSLINUX/mbr.bin ] || need+=(syslinux-common)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need+=(syslinux-common)
[ -f /usr/lib/systemd/boot/efi/systemd-bootx64.efi ] || need+=(systemd-boot-efi)
want systemd-analyze systemd
want qemu-system-x86_64 qemu-system-x86
want qemu-img qemu-utils
want ssh openssh-client
want ssh-keygen openssh-client
if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
  [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -e /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
  want update-binfmts binfmt-support
fi
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  log "installing host packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Foreign-architecture chroots run through qemu-user; the kernel must know the binfmt handler.
if [ "$ARCH" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "no binfmt handler for aarch64: cannot run arm64 programs here"
fi

# Ansible runs from the project venv (the same ansible-core the fleet uses).
if [ ! -x "$REPO_DIR/.venv/bin/ansible-playbook" ]; then
  log "installing ansible-core into the project venv"
  "$REPO_DIR/.venv/bin/pip" install -q ansible-core
fi
if ! "$REPO_DIR/.venv/bin/ansible-doc" -t connection community.general.chroot >/dev/null 2>&1; then
  log "installing the community.general collection (chroot connection) from PyPI's ansible package"
  "$REPO_DIR/.venv/bin/pip" install -q ansible
fi
