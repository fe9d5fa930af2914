#!/usr/bin/env bash
# Installs the pinned agent CLIs the agent tests drive (Claude Code and opencode) from the
# npm registry into one prefix, and checks that the native binary of each platform
# package really runs (offline: `--version` touches no network). Idempotent: quiet when
# the pinned versions are already there.
#
# Prefix: $OUTPOST_AGENTS_PREFIX, default /opt/outpost-agents; the binaries end up in
# <prefix>/bin (tests/agents_cli.rs looks there). Versions: bump both pins together with
# the captures in tests/fixtures/agents/ (see docs/agents.md).
set -euo pipefail

CLAUDE_VERSION=2.1.332
OPENCODE_VERSION=1.18.33
PREFIX="${OUTPOST_AGENTS_PREFIX:-/opt/outpost-agents}"

have() {
    # have <binary> <version>: the binary in the prefix runs and reports that version.
    local out
    out="$("$PREFIX/bin/$1" --version 2>/dev/null </dev/null)" || return 1
    [[ "$out" == *"$2"* ]]
}

if have claude "$CLAUDE_VERSION" && have opencode "$OPENCODE_VERSION"; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "20-agents: installing nodejs and npm (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq nodejs npm >/dev/null
fi

echo "20-agents: installing @anthropic-ai/claude-code@$CLAUDE_VERSION and opencode-ai@$OPENCODE_VERSION into $PREFIX" >&2
mkdir -p "$PREFIX"
# --include=optional: the native binaries come in the platform packages, which npm
# installs as optional dependencies; a config that omits optionals would leave a
# launcher that cannot run.
npm install --global --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    --include=optional \
    "@anthropic-ai/claude-code@$CLAUDE_VERSION" "opencode-ai@$OPENCODE_VERSION" >/dev/null

# The agents run as an unprivileged user: the prefix must be readable and runnable by all.
chmod -R a+rX "$PREFIX"

for pair in "claude $CLAUDE_VERSION" "opencode $OPENCODE_VERSION"; do
    set -- $pair
    if ! have "$1" "$2"; then
        echo "20-agents: $PREFIX/bin/$1 --version does not report $2 after the install:" >&2
        "$PREFIX/bin/$1" --version >&2 || true
        echo "20-agents: check that npm installed the platform package (optional dependency) for $(uname -m)" >&2
        exit 1
    fi
done
