#!/usr/bin/env bash
# Installs what tests/fuzz.rs needs: cargo-fuzz (pinned, from crates.io), only when it is
# missing or another version; quiet when it is there. Takes about a minute to build.
set -euo pipefail
CARGO_FUZZ_VERSION=0.13.2
if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz ${CARGO_FUZZ_VERSION}"; then
    exit 0
fi
echo "installing cargo-fuzz ${CARGO_FUZZ_VERSION} (for tests/fuzz.rs)"
cargo install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked --quiet
