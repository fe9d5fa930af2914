#!/usr/bin/env bash
# schemathesis, pinned, in a venv of its own (never the system's Python packages), for
# tests/schemathesis.rs. Quiet when the pinned version is already there.
#   OUTPOST_TEST_VENV: where the venv goes (default ~/.cache/outpost-test/venv).
set -euo pipefail

VERSION=4.32.5
VENV="${OUTPOST_TEST_VENV:-$HOME/.cache/outpost-test/venv}"

if [ -x "$VENV/bin/schemathesis" ] \
  && "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qF "version $VERSION"; then
  exit 0
fi
echo "== tests/setup/10-schemathesis.sh: schemathesis $VERSION into $VENV"
if [ -f "$VENV/pyvenv.cfg" ]; then
  rm -rf "$VENV"
elif [ -e "$VENV" ]; then
  echo "$VENV exists and is not a venv: move it or set OUTPOST_TEST_VENV" >&2
  exit 1
fi
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check -q "schemathesis==$VERSION"
"$VENV/bin/schemathesis" --version
