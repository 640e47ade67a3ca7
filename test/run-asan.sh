#!/usr/bin/env bash
# Runs the native-facing tests against the AddressSanitizer + UBSan build of the addon
# (cmake-js, build-asan/). Node itself is not instrumented, so the sanitizer runtimes are
# preloaded; leak checking is off because V8 does not free everything at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build-asan/Release/ksm.node ] || npm run --silent build:asan
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export NODE_KSM_SANITIZED=1
export NODE_KSM_BINARY="$PWD/build-asan/Release/ksm.node"
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allow_user_segv_handler=1:handle_segv=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
files=("$@")
# test/arena.test.ts is left out by default: its million-operation churn takes over ten
# minutes under ASan, and the fuzzer (npm run fuzz -- --sanitized) drives Arena
# alloc/release/close through the same native paths under the sanitizers.
[ ${#files[@]} -gt 0 ] || files=(test/memory.test.ts test/gc.test.ts test/worker.test.ts test/merge.test.ts test/fuzz.test.ts)
existing=()
for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
exec npx vitest run "${existing[@]}"
