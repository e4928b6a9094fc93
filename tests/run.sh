#!/usr/bin/env bash
# The project's test command (README): C core tests, then the Python suite against the installed
# package (run from a scratch directory so `import zipar` picks the installed build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
make -s -C "$root/csrc/tests" test
cd "$(mktemp -d)"
python3 -m pytest -q -rs -p no:cacheprovider "$root/tests" "$@"
