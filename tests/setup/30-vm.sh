#!/usr/bin/env bash
# Tools for the VM harness (image/vm/, tests/vm.rs): qemu with KVM, qemu-img, debootstrap
# and e2fsprogs for the Debian image, genisoimage for the NoCloud seed, python3 and git
# for the harness, musl for the static binary. Installs only what is missing; quiet
# when everything is there. Idempotent.
set -euo pipefail

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
collect() {
    need=()
    check qemu-system-x86_64 qemu-system-x86
    check qemu-img qemu-utils
    check debootstrap debootstrap
    check mkfs.ext4 e2fsprogs
    check genisoimage genisoimage
    check python3 python3
    check git git
    check musl-gcc musl-tools
}
install() {
    echo "tests/setup/30-vm.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! out="$($SUDO apt-get update -qq 2>&1 \
        && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" 2>&1)"; then
        echo "$out" >&2
        exit 1
    fi
}
# Two rounds: an install can remove what another check found. Installing Debian's
# qemu-system-x86 removes a qemu-utils of another version (a backport: they come from
# one source package and must match), and the second round puts the matching one in.
for _ in 1 2; do
    collect
    [ ${#need[@]} -eq 0 ] && break
    install
done
collect
if [ ${#need[@]} -gt 0 ]; then
    echo "tests/setup/30-vm.sh: still missing after installing: ${need[*]}" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1 \
    && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl >/dev/null
fi
if [ ! -w /dev/kvm ]; then
    echo "tests/setup/30-vm.sh: no writable /dev/kvm: the VM test runs under TCG (much slower)" >&2
fi
