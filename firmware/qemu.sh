#!/usr/bin/env bash
# Boot an amd64 gateway image under QEMU, headless, with the serial console in a file:
#   firmware/qemu.sh IMAGE [--serial FILE] [--ssh-port PORT] [--uefi] [--accel tcg|kvm] [--mem MiB]
# User-mode networking: the guest reaches this machine's loopback at 10.0.2.2 (a broker on
# 127.0.0.1 answers there) and, with --ssh-port, this machine's 127.0.0.1:PORT reaches its SSH.
# The i6300esb watchdog stands in for the board's hardware watchdog. The image is written to.
set -o errexit -o pipefail -o nounset
[ $# -ge 1 ] || { sed -n '2,6p' "$0" >&2; exit 2; }
image=$1; shift
serial=""
ssh_port=""
uefi=0
accel=${FIRMWARE_QEMU_ACCEL:-tcg}
mem=1536
while [ $# -gt 0 ]; do
  case "$1" in
    --serial) serial=$2; shift 2 ;;
    --ssh-port) ssh_port=$2; shift 2 ;;
    --uefi) uefi=1; shift ;;
    --accel) accel=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    *) echo "qemu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
args=(-machine "q35,accel=$accel" -m "$mem" -smp 2 -display none -monitor none -no-user-config
  -drive "file=$image,format=raw,if=virtio,cache=unsafe"
  -device i6300esb -action watchdog=reset)
[ "$accel" = tcg ] && args+=(-cpu max) || args+=(-cpu host)
if [ -n "$serial" ]; then args+=(-serial "file:$serial"); else args+=(-serial stdio); fi
hostfwd=""
[ -n "$ssh_port" ] && hostfwd=",hostfwd=tcp:127.0.0.1:$ssh_port-:22"
args+=(-netdev "user,id=net0$hostfwd" -device "virtio-net-pci,netdev=net0")
if [ "$uefi" = 1 ]; then
  # UEFI variables are per machine: kept beside the image.
  vars="$image.efivars.fd"
  [ -f "$vars" ] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$vars"
  args+=(-drive "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
    -drive "if=pflash,format=raw,file=$vars")
fi
exec qemu-system-x86_64 "${args[@]}"
