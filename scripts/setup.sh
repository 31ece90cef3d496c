#!/usr/bin/env bash
# Set up gradsweep in a virtual environment .venv at the repository root.
#   bash scripts/setup.sh          the library, the CLI and its dependencies
#   bash scripts/setup.sh --test   also the test tools, Chromium for the report page test and
#                                  the linter shellcheck for the cluster scripts' test
# Idempotent: a second run only installs what is missing. torch is pinned by constraints.txt to
# the CPU build 2.13.0; on a GPU machine install your own torch first and run
#   .venv/bin/pip install -e .       (without the constraints file)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".${extras}" 2>&1 \
  | grep -v "is neither a file nor a directory" || true
.venv/bin/python -c "import gradsweep, torch, ray" || { echo "setup: the install failed (see above)" >&2; exit 1; }
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The report page test renders index.html in a real headless browser; it skips with a reason
  # where Chromium cannot be installed.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  fi
fi
if [ "${1:-}" = "--test" ] && ! command -v shellcheck >/dev/null 2>&1; then
  # tests/test_cluster_files.py lints the Slurm batch script with shellcheck; it skips with a
  # reason where shellcheck cannot be installed.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null) \
      || echo "setup: could not install shellcheck; the shell script lint test will be skipped" >&2
  fi
fi
