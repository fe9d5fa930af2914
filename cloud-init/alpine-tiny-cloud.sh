#!/bin/sh
# outpost on Alpine with tiny-cloud (Alpine's official cloud images): tiny-cloud runs a
# user-data script that starts with #! once, as root, at the end of the default
# runlevel. Set the values below, then:
#   gcloud compute instances create NAME --machine-type=e2-micro --image-family=alpine \
#     --metadata-from-file=user-data=cloud-init/alpine-tiny-cloud.sh ...
# Anything in user-data can be read from inside the VM through the metadata server,
# also by the agents. See cloud-init/README.md and docs/deploy-vm.md.
# OUTPOST_URL / OUTPOST_SHA256: where to download the static outpost binary and its
# sha256 (sha256sum outpost). Leave OUTPOST_URL empty when the image already has
# /usr/local/bin/outpost (an image baked with packer/).
# OUTPOST_TOKEN: bearer token for the API; empty: none, and the worker stays on
# 127.0.0.1, reached through an SSH tunnel (see docs/deploy-vm.md).
# OUTPOST_AGENT: `claude` or `opencode` (the built-in profiles: structured events,
#   cost, budgets, sessions), or an agent command line, quoted; empty: the shell agent.
# OUTPOST_AGENT_NPM: a pinned npm package to install with Node.js and git first:
#   @anthropic-ai/claude-code@2.1.332 (with OUTPOST_AGENT=claude) or
#   opencode-ai@1.18.33 (with OUTPOST_AGENT=opencode); empty: none.
# OUTPOST_SWAP: swap file size; empty: 1G under 2 GiB of memory, else none; 0: none.
# OUTPOST_IDLE_SHUTDOWN: power off after this long without a task (e.g. 30m); empty: never.
#   The worker runs as root and powers off itself (agents run as outpost-agent).
# OUTPOST_ENV: more settings of `outpost serve --help`, as KEY=VALUE words separated by
#   spaces (e.g. 'OUTPOST_MAX_TASKS=2 OUTPOST_BIND=0.0.0.0'; no spaces inside a value).
OUTPOST_URL=https://github.com/OWNER/outpost/releases/download/v0.1.0/outpost-x86_64-unknown-linux-musl
OUTPOST_SHA256=0000000000000000000000000000000000000000000000000000000000000000
OUTPOST_TOKEN=
OUTPOST_AGENT=
OUTPOST_AGENT_NPM=
OUTPOST_SWAP=1G
OUTPOST_IDLE_SHUTDOWN=
OUTPOST_ENV=
# ---- nothing to change below this line ----
set -eu
log() { echo "outpost setup: $*"; }
bin=/usr/local/bin/outpost
if [ -n "${OUTPOST_URL:-}" ]; then
    tmp="$(mktemp /tmp/outpost.XXXXXX)"
    log "downloading $OUTPOST_URL"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 5 -o "$tmp" "$OUTPOST_URL"
    else
        wget -q -O "$tmp" "$OUTPOST_URL"
    fi
    if ! echo "${OUTPOST_SHA256:-}  $tmp" | sha256sum -c - >/dev/null 2>&1; then
        rm -f "$tmp"
        log "the download does not match OUTPOST_SHA256: check both values" >&2
        exit 1
    fi
    chmod 0755 "$tmp"
    bin="$tmp"
elif [ ! -x "$bin" ]; then
    log "no $bin in this image: set OUTPOST_URL and OUTPOST_SHA256" >&2
    exit 1
fi
if [ -n "${OUTPOST_AGENT_NPM:-}" ]; then
    log "installing Node.js, git and $OUTPOST_AGENT_NPM"
    if command -v apk >/dev/null 2>&1; then
        apk add --no-cache nodejs npm git
    elif command -v apt-get >/dev/null 2>&1; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm git ca-certificates
    fi
    npm install -g --include=optional --no-audit --no-fund "$OUTPOST_AGENT_NPM"
fi
set -- install --binary "$bin"
if [ -n "${OUTPOST_SWAP:-}" ]; then set -- "$@" --swap "$OUTPOST_SWAP"; fi
if [ -n "${OUTPOST_TOKEN:-}" ]; then set -- "$@" --token "$OUTPOST_TOKEN"; fi
if [ -n "${OUTPOST_AGENT:-}" ]; then set -- "$@" --agent "$OUTPOST_AGENT"; fi
if [ -n "${OUTPOST_IDLE_SHUTDOWN:-}" ]; then set -- "$@" --idle-shutdown "$OUTPOST_IDLE_SHUTDOWN"; fi
set -f
for kv in ${OUTPOST_ENV:-}; do set -- "$@" --env "$kv"; done
set +f
"$bin" "$@"
if [ "$bin" != /usr/local/bin/outpost ]; then rm -f "$bin"; fi
rm -f /run/outpost-setup/settings
log "done: curl -s http://127.0.0.1:8080/hello (on the VM)"
