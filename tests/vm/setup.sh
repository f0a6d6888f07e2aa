#!/usr/bin/env bash
# Host tools the VM harness needs; idempotent, so CI can run it on every job.
#   qemu-system-x86  qemu-system-x86_64 (TCG: no working KVM is assumed)
#   qemu-utils       qemu-img, for the per-boot copy-on-write overlay
#   mmdebstrap       builds the Debian 12 guest tree (needs the Debian mirror)
#   e2fsprogs        mke2fs -d: an ext4 image from a directory, no loop device
#   openssh-client   ssh/ssh-keygen to drive the guest
#   debian-archive-keyring  verifies the mirror inside mmdebstrap
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests/vm/setup.sh: missing ${need[*]}; run as root to install them" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: qemu's recommends pull in a desktop's worth of packages.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "tests/vm/setup.sh: installed ${need[*]}"
