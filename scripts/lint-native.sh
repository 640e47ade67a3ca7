#!/usr/bin/env bash
# native/ checked by tools: clang-format (.clang-format) must find nothing to change, and
# clang-tidy (.clang-tidy) nothing to report, over the compile commands of the cmake-js
# build of the same sources (build-tidy/, configured only, never built). CI runs it;
# clang-format and clang-tidy come from Debian (.ci/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
clang-format --dry-run -Werror native/*.cc native/*.h
npx cmake-js configure --out build-tidy --CDCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
# The Linux sources (native/unsupported.cc is the other platforms' stub, not in this build).
sources=(native/addon.cc native/errors.cc native/mapping.cc native/pagemap.cc)
printf '%s\n' "${sources[@]}" | xargs -P "$(nproc)" -n 1 clang-tidy -p build-tidy --quiet 2> >(grep -v '^[0-9]* warnings\? generated\.$' >&2)
echo "native/: clang-format and clang-tidy clean (${#sources[@]} sources)"
