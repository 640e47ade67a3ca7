#!/usr/bin/env bash
# Builds the N-API prebuilds that ship in the package: prebuilds/linux-x64/ natively and
# prebuilds/linux-arm64/ with Debian's aarch64 cross g++. One N-API binary per platform
# serves every Node version (>= NAPI_VERSION 8), which scripts/test-abi.sh checks.
#
# node-gyp writes build/ in the directory it runs in, and other work (tests, other
# engineers) loads ./build/Release/ksm.node: so each arch is built in a scratch copy of the
# sources and only the finished prebuild comes back.
#
# Usage: scripts/prebuild.sh [x64] [arm64]     (default: both)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arches=("$@"); [ ${#arches[@]} -gt 0 ] || arches=(x64 arm64)

# node-gyp: the one on PATH (npm run puts npm's own there), else the copy bundled with npm.
gyp=$(command -v node-gyp || true)
[ -n "$gyp" ] || gyp="$(dirname "$(realpath "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
# Headers: where npm is told to find them (nodedir=/usr here, no download); N-API headers
# from any Node >= the NAPI_VERSION we build for are the same contract.
nodedir=${npm_config_nodedir:-$(npm config get nodedir 2>/dev/null || true)}
[ "$nodedir" = undefined ] && nodedir=
[ -z "$nodedir" ] || export npm_config_nodedir=$nodedir

for arch in "${arches[@]}"; do
  case "$arch" in
    x64) cross=() strip_bin=strip machine='X86-64' ;;
    arm64)
      bash "$root/scripts/cross-deps.sh" --build-only
      cross=(CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar)
      strip_bin=aarch64-linux-gnu-strip machine='AArch64' ;;
    *) echo "unknown arch $arch (x64 or arm64)" >&2; exit 2 ;;
  esac
  work=$(mktemp -d "${TMPDIR:-/tmp}/node-ksm-prebuild-$arch.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  cp -r "$root/package.json" "$root/binding.gyp" "$root/native" "$work/"
  ln -s "$root/node_modules" "$work/node_modules"
  started=$(date +%s)
  cxx=${CXX:-g++}; [ "$arch" = arm64 ] && cxx=aarch64-linux-gnu-g++
  "$cxx" -std=c++17 -O2 -fPIC -c "$root/scripts/compat/glibcxx.cc" -o "$work/glibcxx.o"
  # --tag-libc names the file node-ksm.glibc.node, so node-gyp-build on musl (Alpine)
  # skips it and builds from source instead of loading a binary that cannot link.
  (cd "$work" && env "${cross[@]}" LDFLAGS="$work/glibcxx.o" PREBUILD_NODE_GYP="$gyp" PREBUILD_STRIP_BIN="$strip_bin" \
    node "$root/node_modules/prebuildify/bin.js" --napi --strip --tag-libc --arch "$arch" --quiet)
  out="$work/prebuilds/linux-$arch"
  file=$(ls "$out"/*.node)
  readelf -h "$file" | grep -q "Machine:.*$machine" || { echo "$file is not $machine" >&2; exit 1; }
  # The oldest systems Node 20 runs on (glibc 2.28, GCC 8's libstdc++ 3.4.25) must load it.
  need=$(readelf -V "$file" | grep -o '\(GLIBC\|GLIBCXX\)_[0-9.]*' | sort -u | tr '\n' ' ')
  for v in $need; do
    case $v in GLIBC_*) max=GLIBC_2.28 ;; *) max=GLIBCXX_3.4.25 ;; esac
    [ "$(printf '%s\n' "$v" "$max" | sort -V | tail -1)" = "$max" ] || { echo "$file needs $v (> $max)" >&2; exit 1; }
  done
  rm -rf "$root/prebuilds/linux-$arch" && mkdir -p "$root/prebuilds" && cp -r "$out" "$root/prebuilds/"
  echo "prebuilds/linux-$arch/$(basename "$file") $(stat -c %s "$file") bytes in $(( $(date +%s) - started ))s"
  rm -rf "$work"; trap - EXIT
done
