#!/usr/bin/env bash
# deploy/test.sh - install what is missing, build, and run the whole test suite
# through ctest.  Ends with ctest's summary line.
#
#   deploy/test.sh              normal build in build/
#   deploy/test.sh --sanitize   ASan+UBSan build in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."

dir=build
opts=()
case "${1:-}" in
    --sanitize) dir=build-asan; opts=(-DFEDBFT_SANITIZE=ON) ;;
    "") ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

./deploy/setup.sh
jobs=$(nproc)
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${opts[@]}" >/dev/null
cmake --build "$dir" -j"$jobs"
ctest --test-dir "$dir" --output-on-failure -j"$jobs" </dev/null
