#!/usr/bin/env bash
# cli_cluster.sh - `fedbft cluster init`: the files it writes (layout, modes,
# contents that agree with the key files), refusal to overwrite, --force, and
# bad usage.  Starts no node processes (up/down are tested elsewhere).
set -u
FEDBFT=${1:?usage: cli_cluster.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-cli-cluster-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/lib.sh"
mode() { stat -c %a "$1"; }
# json FILE EXPR...: print each Python expression over the parsed file (as
# j), one line each.  (Python starts slowly: ask for several values at once.)
json() {
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
for e in sys.argv[2:]:
    print(eval(e))' "$@"
}
keyinfo() { "$FEDBFT" keyinfo "$1" 2>/dev/null; }

# --help
out=$("$FEDBFT" cluster --help 2>&1)
check "cluster --help exits 0" test $? -eq 0
for sub in init up down status kill restart; do
    check "cluster --help lists $sub" grep -qE "^  $sub( |$)" <<< "$out"
done
check "help cluster shows the same usage" test "$("$FEDBFT" help cluster 2>&1)" = "$out"
check "cluster init --help exits 0" "$FEDBFT" cluster init --help > /dev/null

# ---- a 4-node cluster, 3 clients, base port 7400
d=$tmp/c1
"$FEDBFT" cluster init --nodes 4 --dir "$d" --base-port 7400 --clients 3 > "$tmp/out" 2> "$tmp/err"
check "init exits 0" test $? -eq 0
check "init prints a summary naming f" grep -q "f = 1" "$tmp/out"
check "init suggests the next step" grep -q "fedbft cluster up --dir" "$tmp/out"
check "init is quiet on stderr" test ! -s "$tmp/err"
check "cluster.json exists, mode 0644" test "$(mode "$d/cluster.json")" = 644
mapfile -t v < <(json "$d/cluster.json" "sorted(j)" "len(j['replicas'])" "len(j['clients'])" \
    "len({e['public_key'] for e in j['replicas'] + j['clients']})")
check "cluster.json is valid JSON" test ${#v[@]} -eq 4
check "cluster.json has exactly replicas, clients and the pinned model digest" \
    test "${v[0]:-}" = "['clients', 'model_digest', 'replicas']"
check "cluster.json lists 4 replicas" test "${v[1]:-}" = 4
check "cluster.json lists 3 clients" test "${v[2]:-}" = 3
check "all 7 public keys are distinct" test "${v[3]:-}" = 7
for i in 0 1 2 3; do
    n=$d/node$i
    check "node$i dir is mode 0700" test "$(mode "$n")" = 700
    check "node$i/node.key is mode 0600" test "$(mode "$n/node.key")" = 600
    check "node$i/node.pub exists" test -s "$n/node.pub"
    mapfile -t v < <(json "$n/node.json" "j['id']" "j['cluster']" "j['key']" "j['data_dir']" \
        "j['durability']" "j['log_window']")
    check "node$i/node.json is valid JSON" test ${#v[@]} -eq 6
    check "node$i/node.json id" test "${v[0]:-}" = $i
    check "node$i/node.json paths" test "${v[*]:1:3}" = "../cluster.json node.key data"
    check "node$i/node.json durability fsync" test "${v[4]:-}" = fsync
    check "node$i/node.json log_window default" test "${v[5]:-}" = 64
    r="j['replicas'][$i]"
    mapfile -t v < <(json "$d/cluster.json" "$r['id']" "$r['host']" "$r['port']" \
        "$r['client_port']" "$r['public_key']")
    check "replica $i id" test "${v[0]:-}" = $i
    check "replica $i host" test "${v[1]:-}" = 127.0.0.1
    check "replica $i port" test "${v[2]:-}" = $((7400 + i))
    check "replica $i client_port" test "${v[3]:-}" = $((7500 + i))
    pk=$(keyinfo "$n/node.key")
    check "keyinfo accepts node$i's key" grep -Eq '^[0-9a-f]{64}$' <<< "$pk"
    check "replica $i public_key matches its key file" test "${v[4]:-}" = "$pk"
done
mapfile -t v < <(json "$d/cluster.json" "j['clients'][0]['id']" "j['clients'][0]['public_key']" \
    "j['clients'][1]['id']" "j['clients'][1]['public_key']" \
    "j['clients'][2]['id']" "j['clients'][2]['public_key']")
for j in 0 1 2; do
    c=$d/clients/client$j
    check "client$j key is mode 0600" test "$(mode "$c/node.key")" = 600
    check "client $j id" test "${v[2 * j]:-}" = $((1000 + j))
    check "client $j public_key matches its key file" \
        test "${v[2 * j + 1]:-}" = "$(keyinfo "$c/node.key")"
done
check "no node4 was made" test ! -e "$d/node4"

# status of a cluster that was never started (starts nothing)
"$FEDBFT" cluster status --dir "$d" > "$tmp/out" 2>&1
check "status exits 0" test $? -eq 0
check "status lists 4 stopped nodes" test "$(grep -c ' stopped ' "$tmp/out")" = 4
"$FEDBFT" cluster kill 0 --dir "$d" > /dev/null 2> "$tmp/err"
check "kill of a stopped node exits 1" test $? -eq 1
check "kill explains the node is not running" grep -q "not running" "$tmp/err"

# ---- refusing to overwrite, and --force
sum=$(cat "$d/cluster.json" "$d"/node*/node.key | sha256sum)
"$FEDBFT" cluster init --nodes 4 --dir "$d" > /dev/null 2> "$tmp/err"
check "init refuses an existing cluster (exit 1)" test $? -eq 1
check "the refusal explains itself" grep -q "refusing to overwrite" "$tmp/err"
check "the refusal names --force" grep -q -- "--force" "$tmp/err"
check "a refused init changed nothing" \
    test "$(cat "$d/cluster.json" "$d"/node*/node.key | sha256sum)" = "$sum"
mkdir -p "$d/node1/data/sub" && echo old > "$d/node1/data/sub/state"
old_pk=$(keyinfo "$d/node0/node.key")
"$FEDBFT" cluster init --nodes 4 --dir "$d" --force --durability os --clients 0 \
    > "$tmp/out" 2>&1
check "init --force exits 0" test $? -eq 0
new_pk=$(keyinfo "$d/node0/node.key")
check "init --force makes new keys" test -n "$new_pk" -a "$new_pk" != "$old_pk"
check "init --force removes the old cluster's node data" test ! -e "$d/node1/data"
mapfile -t v < <(json "$d/cluster.json" "j['replicas'][0]['public_key']" "len(j['clients'])" \
    "j['replicas'][3]['port']" "j['replicas'][3]['client_port']")
check "cluster.json matches the new key" test "${v[0]:-}" = "$new_pk"
check "--durability os reaches node.json" test "$(json "$d/node2/node.json" "j['durability']")" = os
check "--clients 0 lists no clients" test "${v[1]:-}" = 0
check "--base-port defaults to 7000" test "${v[2]:-}" = 7003
# Nodes on one host share its CPUs: each gets an equal share of verifier
# threads, at least 1 (the host's usable CPUs, narrowed like nproc's).
share=$(( $(nproc) / 4 ))
[ "$share" -ge 1 ] || share=1
w=$(json "$d/node1/node.json" "j['worker_threads']")
check "one host: worker_threads is at least 1 and at most nproc/4 (got $w)" \
    test "$w" -ge 1 -a "$w" -le "$share"
"$FEDBFT" cluster init --nodes 4 --dir "$tmp/w3" --model none --worker-threads 3 > /dev/null 2>&1
check "--worker-threads 3 reaches node.json" \
    test "$(json "$tmp/w3/node3/node.json" "j['worker_threads']")" = 3
"$FEDBFT" cluster init --nodes 4 --dir "$tmp/wh" --model none \
    --hosts 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 > /dev/null 2>&1
check "--hosts: worker_threads 0 (each node sizes its pool where it runs)" \
    test "$(json "$tmp/wh/node0/node.json" "j['worker_threads']")" = 0
check "client ports default to 7100+i" test "${v[3]:-}" = 7103

# defaults: 8 clients; --host
"$FEDBFT" cluster init --nodes 7 --dir "$tmp/c2" --host 127.0.0.2 > /dev/null 2>&1
check "init of 7 nodes exits 0" test $? -eq 0
mapfile -t v < <(json "$tmp/c2/cluster.json" "len(j['clients'])" \
    "[c['id'] for c in j['clients']] == list(range(1000, 1008))" \
    "{r['host'] for r in j['replicas']}")
check "default is 8 clients" test "${v[0]:-}" = 8
check "client ids are 1000..1007" test "${v[1]:-}" = True
check "--host reaches every replica" test "${v[2]:-}" = "{'127.0.0.2'}"
check "7 nodes tolerate f = 2" test -d "$tmp/c2/node6" -a ! -e "$tmp/c2/node7"

# ---- bad usage: exit 2, a reason, and nothing written
bad() { # bad DESCRIPTION EXPECTED_MESSAGE ARGS...
    local what=$1 msg=$2; shift 2
    rm -rf "$tmp/bad"
    "$FEDBFT" cluster "$@" > /dev/null 2> "$tmp/err"
    local rc=$?
    check "$what exits 2" test $rc -eq 2
    check "$what says why" grep -q -- "$msg" "$tmp/err"
    check "$what writes nothing" test ! -e "$tmp/bad"
}
bad "init without --nodes" "--nodes N is required" init --dir "$tmp/bad"
bad "init without --dir" "--dir DIR is required" init --nodes 4
bad "init --nodes 3" "at least 4" init --nodes 3 --dir "$tmp/bad"
bad "init --nodes 101" "4..100" init --nodes 101 --dir "$tmp/bad"
bad "init --nodes abc" "--nodes abc" init --nodes abc --dir "$tmp/bad"
bad "init --nodes -4" "--nodes -4" init --nodes -4 --dir "$tmp/bad"
bad "init --base-port 0" "--base-port 0" init --nodes 4 --dir "$tmp/bad" --base-port 0
bad "init --base-port 70000" "--base-port 70000" init --nodes 4 --dir "$tmp/bad" --base-port 70000
bad "init --base-port too high for N" "too high" init --nodes 4 --dir "$tmp/bad" --base-port 65500
bad "init --clients -1" "--clients -1" init --nodes 4 --dir "$tmp/bad" --clients -1
bad "init --durability bogus" "fsync or os" init --nodes 4 --dir "$tmp/bad" --durability bogus
bad "init --worker-threads x" "must be 0..1024" init --nodes 4 --dir "$tmp/bad" --worker-threads x
bad "init --host with a space" "--host" init --nodes 4 --dir "$tmp/bad" --host "a b"
bad "init with an unknown option" "--bogus: unknown option" init --nodes 4 --dir "$tmp/bad" --bogus
bad "init with a stray argument" "unexpected argument" init --nodes 4 --dir "$tmp/bad" extra
bad "init --dir without a value" "needs a value" init --nodes 4 --dir
bad "an unknown subcommand" "unknown subcommand" frobnicate --dir "$tmp/bad"
bad "no subcommand" "which subcommand" 
bad "kill without a node id" "one node id" kill --dir "$d"
bad "kill of a node that does not exist" "not a node" kill 9 --dir "$d"
bad "restart with two node ids" "one node id" restart 1 2 --dir "$d"
"$FEDBFT" cluster status --dir "$tmp/nonexistent" > /dev/null 2> "$tmp/err"
check "status of a missing directory exits 1" test $? -eq 1
check "status of a missing directory names it" grep -q "nonexistent" "$tmp/err"

echo "$fails failure(s)"
test "$fails" -eq 0
