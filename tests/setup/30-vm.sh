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
    # qemu-system-x86 and qemu-utils come from one source package and must match: a
    # qemu-utils of another version (a backport) is removed when qemu-system-x86 is
    # installed, so the two always go in together.
    case " ${need[*]} " in
        *" qemu-system-x86 "*|*" qemu-utils "*) need+=(qemu-system-x86 qemu-utils) ;;
    esac
}
collect
if [ ${#need[@]} -gt 0 ]; then
    echo "tests/setup/30-vm.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! out="$($SUDO apt-get update -qq 2>&1 \
        && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" 2>&1)"; then
        echo "$out" >&2
        exit 1
    fi
    # An install can remove a package another check found (a conflict): say so.
    collect
    if [ ${#need[@]} -gt 0 ]; then
        echo "tests/setup/30-vm.sh: still missing after the install: ${need[*]}" >&2
        exit 1
    fi
fi
if command -v rustup >/dev/null 2>&1 \
    && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl >/dev/null
fi
if [ ! -w /dev/kvm ]; then
    echo "tests/setup/30-vm.sh: no writable /dev/kvm: the VM test runs under TCG (much slower)" >&2
fi
