#!/usr/bin/env bash
# The Debian packages the test suite needs, installed only when missing (quiet when
# all are there). Run by ./test before the suite, in name order with the other
# tests/setup/*.sh files.
#   musl-tools: the static binary; curl + nghttp2-client: h1/h2c clients in tests;
#   git: the real git CLI and http-backend; podman + runc + busybox-static: the image;
#   cloud-init + packer: validating the VM files; util-linux: unshare, swapon, mkswap;
#   wrk: the bench's load; python3 + python3-venv: schemathesis (10-schemathesis.sh).
set -euo pipefail

PACKAGES=(
  ca-certificates curl git musl-tools nghttp2-client wrk podman runc busybox-static
  cloud-init packer util-linux procps iproute2 python3 python3-venv make gcc
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
echo "== tests/setup/00-base.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
