#!/usr/bin/env bash
# Debian packages for the linux-arm64 prebuild (cross g++) and for running it (qemu-user).
# --no-install-recommends keeps qemu-user-binfmt out: it would register arm64 binaries
# with the host kernel machine-wide, and scripts/test-arm64.sh calls qemu explicitly.
# Installed only when missing; needs root (CI and the dev machines run as root).
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
[ "${1:-}" = --build-only ] || command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages (run as root, or apt-get install them): ${need[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
