#!/usr/bin/env bash
# deploy/docker/build-stage.sh - the Dockerfile's build stage, also run as is
# on a Debian 12 host (tests/integration/deploy_test.sh does): install the
# build packages, configure without the test suite, build, and install into a
# staging root.
#
#   SRC=DIR BUILD=DIR DESTDIR=DIR deploy/docker/build-stage.sh [--deps-only]
#
#   SRC         source tree (default: the tree holding this script)
#   BUILD       build directory (default: SRC/build-docker)
#   DESTDIR     staging root: the install lands in DESTDIR/PREFIX
#               (default: SRC/out/docker-root)
#   PREFIX      install prefix (default /usr: DESTDIR/usr/bin/fedbft, ...)
#   BUILD_TYPE  CMake build type (default RelWithDebInfo, as every other build;
#               the installed binary is stripped)
#   --deps-only install the build packages and stop (a cached image layer)
#
# apt-get runs only as root and only for packages that are missing; as
# another user the missing ones are named and the build is tried anyway.
set -euo pipefail

deps_only=0
case "${1:-}" in
    --deps-only) deps_only=1 ;;
    "") ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-stage.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$(cd "$here/../.." && pwd)}
BUILD=${BUILD:-$SRC/build-docker}
DESTDIR=${DESTDIR:-$SRC/out/docker-root}
PREFIX=${PREFIX:-/usr}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}

# What building needs, and no more (no test framework, no compilers beyond C).
pkgs=(
    gcc libc6-dev make cmake pkg-config
    libsodium-dev libuv1-dev libprotobuf-c-dev protobuf-c-compiler libxxhash-dev
    libsqlite3-dev libjansson-dev libhttp-parser-dev
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "build-stage: all ${#pkgs[@]} build packages present"
elif [ "$(id -u)" -ne 0 ]; then
    echo "build-stage: not root, not installing: ${missing[*]} (the build may fail)" >&2
else
    echo "build-stage: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$deps_only" -eq 0 ] || exit 0

[ -f "$SRC/CMakeLists.txt" ] || { echo "build-stage: SRC=$SRC holds no CMakeLists.txt" >&2; exit 1; }
case "$DESTDIR" in
    /*) ;;
    *) echo "build-stage: DESTDIR must be an absolute path, not '$DESTDIR'" >&2; exit 2 ;;
esac
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DFEDBFT_TESTS=OFF \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
DESTDIR="$DESTDIR" cmake --install "$BUILD" --strip
echo "build-stage: installed into $DESTDIR$PREFIX"
