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
# The chart tests render with librsvg in DejaVu Sans, the font the charts are laid out for.
command -v rsvg-convert >/dev/null || need+=(librsvg2-bin)
fc-list 2>/dev/null | grep -q 'DejaVuSans\.ttf' || need+=(fonts-dejavu-core)
# deploy/: systemd-analyze checks the units; prometheus brings promtool and the server the
# dashboard test queries (without its recommended node exporter).
command -v systemd-analyze >/dev/null || need+=(systemd)
# test:kernels boots Debian's kernels in QEMU guests with a busybox initramfs; the top
# test watches a real qemu process.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
command -v xz >/dev/null || need+=(xz-utils)
command -v file >/dev/null || need+=(file)
# clang-format and clang-tidy: scripts/lint-native.sh checks native/ with them.
command -v clang-format >/dev/null || need+=(clang-format)
command -v clang-tidy >/dev/null || need+=(clang-tidy)
bare=()
{ command -v promtool && command -v prometheus; } >/dev/null || bare+=(prometheus)
if [ ${#need[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    if [ ${#bare[@]} -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
      # The package enables and starts its own server where systemd runs; the tests start theirs.
      if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi
    fi
  else
    echo "missing system packages (need root to install): ${need[*]} ${bare[*]}" >&2
  fi
fi
