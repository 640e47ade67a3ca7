#!/usr/bin/env bash
# Tests a release tarball as users get it, not the work tree. Parts (default: all):
#   package      test/package.test.ts on this tarball: exact contents, publint, attw,
#                ESM/CommonJS/types consumers, the build from source when no prebuild
#                matches, and what install and import say when nothing can be built
#   no-compiler  installed into an empty project with only node, npm and sh on PATH (no
#                compiler, make or python), with --ignore-scripts and with scripts on:
#                the smoke test (scripts/tarball-smoke.mts) on official Node of every line
#                package.json's engines names
#   arm64        scripts/test-arm64.sh with the tarball's linux-arm64 binary (Node 24, 26)
#   abi          scripts/test-abi.sh with the tarball's linux-x64 binary: the native-facing
#                tests (memory, GC, worker threads) on every engines line but the newest
#   integration  the same plus the KSM integration tests on the newest line (the Active
#                LTS): merging, waiting, boosting, statistics, control, testing helpers
# Needs root and KSM (the smoke and integration tests merge pages; KSM_REQUIRE=1).
# Usage: scripts/test-tarball.sh TARBALL [package|no-compiler|arm64|abi|integration ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 TARBALL [package|no-compiler|arm64|abi|integration ...]" >&2; exit 2; }
tgz=$(realpath "$1"); shift
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(package no-compiler arm64 abi integration)
cd "$root"
work=$(mktemp -d "${TMPDIR:-/tmp}/node-ksm-tarball.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The Node lines the tarball claims (engines.node, "^20.19.0 || ^22.12.0 || ...").
tar -xzf "$tgz" -C "$work" package/package.json
majors=($(node -p 'require(process.argv[1]).engines.node.match(/\^\d+/g).map((m) => m.slice(1)).join(" ")' \
  "$work/package/package.json"))

no_compiler() {
  local npm_cli started
  npm_cli=$(realpath "$(command -v npm)")
  # Two consumers: npm's default (the install script runs and must find the prebuild) and
  # --ignore-scripts (as with npm 11 allowScripts or pnpm). Installed by this machine's
  # Node and npm: official Node packages on the registry carry no npm.
  # sh: npm runs install scripts with the sh it finds on PATH.
  mkdir -p "$work/bin-install"
  ln -s "$(command -v node)" "$work/bin-install/node"
  ln -s "$npm_cli" "$work/bin-install/npm"
  ln -s /bin/sh "$work/bin-install/sh"
  # Proof that the PATH given to npm and to the smoke test has no way to build.
  PATH="$work/bin-install" /bin/bash -c '
    for t in gcc g++ cc c++ clang clang++ make python3 python; do
      if command -v "$t"; then echo "$t is on PATH" >&2; exit 1; fi
    done'
  echo "no compiler on PATH: command -v g++ gcc cc c++ clang make python3 find nothing"
  for kind in scripts ignore-scripts; do
    local dir="$work/consumer-$kind" flags=()
    [ "$kind" = ignore-scripts ] && flags=(--ignore-scripts)
    mkdir -p "$dir"
    echo "{\"name\":\"consumer-$kind\",\"private\":true}" > "$dir/package.json"
    started=$(date +%s)
    (cd "$dir" && PATH="$work/bin-install" npm install --prefer-offline --no-audit --no-fund --no-package-lock \
      --loglevel=error "${flags[@]}" "$tgz")
    echo "installed with $kind in $(( $(date +%s) - started ))s"
  done

  # The smoke test, type-checked against the tarball's types and emitted as plain ESM: the
  # consumer has no tsx. (skipLibCheck: test/package.test.ts checks the .d.ts files.)
  local dir="$work/consumer-ignore-scripts"
  cp scripts/tarball-smoke.mts "$dir/smoke.mts"
  cat > "$dir/tsconfig.json" <<EOF
{ "compilerOptions": { "module": "nodenext", "moduleResolution": "nodenext", "target": "es2022", "strict": true, "skipLibCheck": true,
  "types": ["node"], "typeRoots": ["$root/node_modules/@types"], "rootDir": ".", "outDir": "." },
  "files": ["smoke.mts"] }
EOF
  node node_modules/typescript/bin/tsc -p "$dir/tsconfig.json"
  cp "$dir/smoke.mjs" "$work/consumer-scripts/smoke.mjs"

  mkdir -p /run/node-ksm
  local failed=() major node_bin bin
  for major in "${majors[@]}"; do
    node_bin=$(bash scripts/node-dist.sh "$major" x64)
    bin="$work/bin-$major"; mkdir -p "$bin"; ln -s "$node_bin" "$bin/node"
    # Under the machine-wide test lock: the smoke test boosts ksmd and checks that every
    # setting comes back, which another test changing them meanwhile would falsify.
    if ! (cd "$dir" && PATH="$bin" /usr/bin/flock -w 600 /run/node-ksm/tests.lock node smoke.mjs --prebuilt --no-compiler)
    then failed+=("$major"); fi
  done
  # npm's default install (the install script ran, found the prebuild, built nothing).
  (cd "$work/consumer-scripts" && PATH="$work/bin-install" /usr/bin/flock -w 600 /run/node-ksm/tests.lock \
    node smoke.mjs --prebuilt --no-compiler) || failed+=("install-script")
  [ ${#failed[@]} -eq 0 ] || { echo "smoke test failed on: ${failed[*]}" >&2; return 1; }
  echo "smoke test passed on Node ${majors[*]} (x64, official builds) and with the install script run"
}

for part in "${parts[@]}"; do
  started=$(date +%s)
  printf '\n--- tarball: %s\n' "$part"
  case "$part" in
    package) NODE_KSM_TARBALL="$tgz" npx vitest run --config scripts/vitest.config.mts test/package.test.ts test/install.test.ts ;;
    no-compiler) no_compiler ;;
    arm64) NODE_KSM_TARBALL="$tgz" bash scripts/test-arm64.sh ;;
    abi)
      # Merging on every line is the no-compiler smoke test's; these are the tests of what
      # the binary does with V8 (external buffers, finalizers, worker threads).
      KSM_REQUIRE=1 NODE_KSM_TARBALL="$tgz" NODE_KSM_ABI_TESTS="test/memory.test.ts test/gc.test.ts test/worker.test.ts" \
        bash scripts/test-abi.sh "${majors[@]:0:${#majors[@]}-1}" ;;
    integration)
      # The files that prove each KSM API works against the kernel, on the newest line.
      # Left to the main run on the machine's Node: autotune and the scanner benchmark
      # (minutes of policy logic), boost-faults, faults, leaks and the fuzzers (this
      # library's own robustness), the examples, the CLI and Prometheus.
      KSM_REQUIRE=1 NODE_KSM_TARBALL="$tgz" NODE_KSM_ABI_TESTS="test/memory.test.ts test/gc.test.ts \
        test/worker.test.ts test/merge.test.ts test/wait.test.ts test/boost.test.ts test/stats.test.ts \
        test/control.test.ts test/testing.test.ts" bash scripts/test-abi.sh "${majors[-1]}" ;;
    *) echo "unknown part $part (package, no-compiler, arm64, abi, integration)" >&2; exit 2 ;;
  esac
  echo "--- tarball: $part passed in $(( $(date +%s) - started ))s"
done
