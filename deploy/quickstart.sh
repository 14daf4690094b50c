#!/usr/bin/env bash
# deploy/quickstart.sh - install what is missing, build, and run the main job:
# a local 4-node fedbft cluster on 127.0.0.1 that commits writes, serves
# reads and runs inference on the synthesized small model, once through
# consensus (f+1 replicas agree on the output) and once through node 0's
# OpenAI-style HTTP API, then shows each node's status.  The cluster keeps running; stop it
# with:  ./build/fedbft cluster down --dir out/quickstart
set -euo pipefail
cd "$(dirname "$0")/.."

./deploy/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

F=./build/fedbft
dir=${FEDBFT_QUICKSTART_DIR:-$PWD/out/quickstart}
if [ ! -f "$dir/cluster.json" ]; then
    echo "== fedbft cluster init --nodes 4 --dir $dir"
    "$F" cluster init --nodes 4 --dir "$dir" --base-port "${FEDBFT_QUICKSTART_PORT:-7000}"
fi
echo
echo "== fedbft cluster up --dir $dir"
"$F" cluster up --dir "$dir"

client() { "$F" client --cluster "$dir/cluster.json" --key "$dir/clients/client0/node.key" "$@"; }
echo
echo "== writes and reads through the cluster (each answer agreed by f+1 = 2 replicas; fast reads by 2f+1 = 3)"
set -x
client put greeting "hello, federation"
client get greeting
client cas greeting "hello, federation" "hello again"
client get --ordered greeting
client put counter 1
client del counter
set +x
echo
echo "== 200 writes from 8 concurrent clients"
"$F" client --cluster "$dir/cluster.json" --keys "$dir/clients" load --writes 200 --concurrency 8
echo
port=$(sed -n 's/.*"http_port": *\([0-9]*\).*/\1/p' "$dir/node0/node.json")
echo "== inference through consensus: ordered by PBFT, run by every replica, accepted on f+1 matching output digests"
set -x
client infer --max-tokens 16 "The federation agreed on"
set +x
echo
echo "== inference through node 0's HTTP API (OpenAI-style; the model is random, so is the text)"
set -x
curl -sS "http://127.0.0.1:$port/v1/models"; echo
curl -sS "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "The federation agreed on", "max_tokens": 16, "temperature": 0}'; echo
set +x
echo
echo "== fedbft cluster status --dir $dir"
"$F" cluster status --dir "$dir"
echo
echo "The cluster is still running.  Logs: $dir/node<i>/node.log"
echo "Stop it with:  $F cluster down --dir $dir"
