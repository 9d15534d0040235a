#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh machine: the system packages the tests use
# (Debian's Chromium renders the plan's HTML report), the venv with the locked test extra, then
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null \
    || echo "note: could not install chromium; the HTML report render test will skip"
fi
python3 -m venv .venv
# Exactly the tested set: constraints.txt (written by scripts/lock.sh from a `.[test]`
# install, so it is that install's full list) installed as requirements and as constraints,
# not whatever the registry serves today.
.venv/bin/pip install -q -r constraints.txt -c constraints.txt -e '.[test]'
# pytest's own -q (pyproject addopts) keeps its count line, `N passed`, so an empty run shows.
# `-n auto` (pytest-xdist) runs the tests on every core: about 5-7 minutes instead of 10 on two;
# a later `-n 0` among the arguments runs them in one process.
exec .venv/bin/pytest -n auto "$@"
