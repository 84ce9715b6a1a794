#!/usr/bin/env bash
# promtool, which checks docs/prometheus/alerts.yml, runs its unit tests and
# lints the metrics leveret exposes (tests/test_metrics.py). Taken from Debian's
# prometheus package without installing it: the .deb is unpacked and only
# promtool kept, so no Prometheus server is set up or started.
#
#   scripts/promtool.sh     put promtool at tools/promtool/promtool
set -euo pipefail
cd "$(dirname "$0")/.."

dest=tools/promtool
if [[ -x "$dest/promtool" ]]; then
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "promtool: apt-get and dpkg-deb not found; put a promtool binary at $dest/promtool" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt-get download needs a package index; fetch one only if it is missing.
if ! (cd "$work" && apt-get download -qq prometheus 2>/dev/null); then
  apt-get update -qq
  (cd "$work" && apt-get download -qq prometheus)
fi
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$dest"
cp "$work/root/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -1
