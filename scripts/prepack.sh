#!/usr/bin/env bash
# npm's `prepack`: `npm pack` and `npm publish` run it before they pack, so a tarball can
# never miss a prebuild or carry stale output. It empties dist/ and prebuilds/ (a file
# of a module since deleted or moved, a prebuild for a platform no longer shipped) and
# builds the prebuilds for linux-x64 and linux-arm64. npm then runs `prepare`
# (tsc -p tsconfig.build.json), which writes dist/ afresh: building it here too would
# compile everything twice per pack. test/package.test.ts fails a tarball without dist/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
started=$(date +%s)
rm -rf dist prebuilds
bash scripts/prebuild.sh x64 arm64
echo "prepack: dist/ emptied for prepare, prebuilds built in $(( $(date +%s) - started ))s"
