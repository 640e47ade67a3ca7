#!/usr/bin/env bash
# The release, as one command: `npm pack` (its prepack builds the prebuilds for linux-x64
# and linux-arm64 and empties dist/, its prepare compiles dist/ afresh), then every test
# of that tarball (scripts/test-tarball.sh). Publish the very file it names:
# `npm publish ./node-ksm-X.Y.Z.tgz` (publishing a tarball runs no build again).
# Usage: scripts/release.sh [DIR]        (where the tarball goes; default: the repository)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=$(realpath "${1:-$root}")
mkdir -p "$out"
tgz="$out/$(node -p 'const p = require("./package.json"); `${p.name}-${p.version}.tgz`')"
rm -f "$tgz"
started=$(date +%s)
npm pack --pack-destination "$out" >&2
echo "packed $tgz in $(( $(date +%s) - started ))s" >&2
bash scripts/test-tarball.sh "$tgz" >&2
echo "$tgz"
