#!/usr/bin/env bash
# System packages the tests use, from Debian. Installed only when missing.
set -euo pipefail
need=()
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v redis-server >/dev/null || need+=(redis-server)
command -v cmake >/dev/null || need+=(cmake)
command -v ninja >/dev/null || need+=(ninja-build)
command -v setpriv >/dev/null || need+=(util-linux)
# gdb: the faults test reads the backtrace of a crashed child from its core file.
command -v gdb >/dev/null || need+=(gdb)
# clang-format and clang-tidy: scripts/lint-native.sh checks native/ with them.
command -v clang-format >/dev/null || need+=(clang-format)
command -v clang-tidy >/dev/null || need+=(clang-tidy)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages (need root to install): ${need[*]}" >&2
  fi
fi
