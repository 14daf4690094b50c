#!/usr/bin/env bash
# deploy/quickstart.sh - install what is missing, build, and run the main job.
#
# Today the main job shows the commands and makes an identity key; as the
# node runtime lands it grows into a local 4-node cluster serving writes,
# reads and inference.
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

keydir=${FEDBFT_QUICKSTART_DIR:-$PWD/out/quickstart}/node0
echo
echo "== fedbft --help"
./build/fedbft --help
echo
echo "== fedbft keygen --out $keydir"
if [ -e "$keydir/node.key" ]; then
    echo "(keeping the identity already in $keydir)"
    cat "$keydir/node.pub"
else
    ./build/fedbft keygen --out "$keydir"
fi
ls -l "$keydir"
