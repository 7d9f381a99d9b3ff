#!/usr/bin/env bash
# Installs openai-node for tests/clients exactly as tests/clients/node/package-lock.json pins it (`npm ci`:
# the lock's version and integrity hash, nothing resolved anew) into that folder's node_modules (gitignored),
# so the tests run offline afterwards. Does nothing where node or npm is missing (scripts/install-system.sh
# installs Debian's); tests/clients/test_node.py then fails saying so.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/tests/clients/node"
if ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  echo "install-node-clients: node or npm not found; openai-node is not installed" >&2
  exit 0
fi
cd "$dir"
npm ci --no-audit --no-fund --loglevel=error
touch node_modules/.installed
