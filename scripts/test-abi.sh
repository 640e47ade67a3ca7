#!/usr/bin/env bash
# ABI proof: the one linux-x64 N-API prebuild (no rebuild per Node version) loads and
# passes the native-facing tests under each supported Node major, using official Node
# binaries from the npm registry (scripts/node-dist.sh). The prebuild is the one inside
# NODE_KSM_TARBALL when set (CI: the release tarball), else prebuilds/linux-x64 (built
# first when missing). NODE_KSM_ABI_TESTS replaces the list of test files.
# Usage: scripts/test-abi.sh [majors...]       (default: the lines package.json's engines names)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=($(node -p 'require("./package.json").engines.node.match(/\^\d+/g).map((m) => m.slice(1)).join(" ")'))
if [ -n "${NODE_KSM_TARBALL:-}" ]; then
  unpacked=$(mktemp -d "${TMPDIR:-/tmp}/node-ksm-abi.XXXXXX")
  trap 'rm -rf "$unpacked"' EXIT
  chmod 755 "$unpacked" # tests load the binary as user nobody too
  tar -xzf "$NODE_KSM_TARBALL" -C "$unpacked" package/prebuilds/linux-x64
  prebuild=$(ls "$unpacked"/package/prebuilds/linux-x64/*.node)
else
  prebuild=$(ls prebuilds/linux-x64/*.node 2>/dev/null | head -1 || true)
  [ -n "$prebuild" ] || { bash scripts/prebuild.sh x64; prebuild=$(ls prebuilds/linux-x64/*.node | head -1); }
fi
files=(${NODE_KSM_ABI_TESTS:-test/memory.test.ts test/gc.test.ts test/worker.test.ts test/merge.test.ts})
failed=() passed=()
for major in "${majors[@]}"; do
  node_bin=$(bash scripts/node-dist.sh "$major" x64)
  version=$("$node_bin" --version)
  printf '\n=== Node %s (%s) with %s\n' "$version" "$node_bin" "$prebuild"
  started=$(date +%s)
  # vitest's forks pool starts its workers with process.execPath, so they run this Node too.
  if NODE_KSM_BINARY="$prebuild" "$node_bin" node_modules/vitest/vitest.mjs run "${files[@]}"; then
    passed+=("$version ($(( $(date +%s) - started ))s)")
  else
    failed+=("$version")
  fi
done
echo
echo "ABI check: passed on ${passed[*]:-none}; failed on ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
