#!/usr/bin/env bash
# Offline checks of deploy/: the Prometheus rules (syntax and their unit tests), the
# example config, and the systemd units (systemd-analyze verify, and security with a
# ceiling on the exposure score). Needs promtool (Debian: prometheus) and systemd-analyze
# (systemd); .ci/deps.sh installs both. Neither unit is started: that needs systemd as PID 1.
set -euo pipefail
cd "$(dirname "$0")"
# Exposure ceiling for systemd-analyze security, in its 0-100 scale (the printed 2.0 is 20).
MAX_EXPOSURE=${MAX_EXPOSURE:-25}

echo "--- promtool check rules"
promtool check rules prometheus/node-ksm.rules.yml
echo "--- promtool test rules"
promtool test rules prometheus/node-ksm.rules.test.yml
echo "--- promtool check config (example)"
promtool check config prometheus/prometheus.example.yml
echo "--- systemd-analyze verify"
# verify exits 0 on an unknown key or a bad value (it only warns), so any output fails.
out=$(systemd-analyze verify systemd/node-ksm-exporter.service systemd/node-ksm-autotune.service 2>&1)
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "  clean"
echo "--- systemd-analyze security (offline, exposure at most $MAX_EXPOSURE/100)"
for unit in systemd/node-ksm-exporter.service systemd/node-ksm-autotune.service; do
  systemd-analyze security --offline=true --threshold="$MAX_EXPOSURE" "$unit" | tail -n 1
done
