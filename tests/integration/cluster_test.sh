#!/usr/bin/env bash
# cluster_test.sh - a real 4-node cluster on 127.0.0.1: client operations,
# 1,000 writes from 8 clients, a node killed with SIGKILL and restarted that
# catches up, a client with an unknown key refused, a peer sending garbage and
# oversized frames cut off, and every node ending with the same state digest.
#   cluster_test.sh PATH_TO_FEDBFT [fsync|os]
set -u
FEDBFT=${1:?usage: cluster_test.sh PATH_TO_FEDBFT [durability]}
DURABILITY=${2:-os}
tmp=$(mktemp -d /tmp/fedbft-it-XXXXXX)
dir=$tmp/cluster
cleanup() {
    "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 15 "$dir/node$i/node.log" 2>/dev/null; done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# Ports: a random base so parallel runs do not collide, kept below the
# kernel's ephemeral range (32768+) where other tests' client sockets live.
base=$((10000 + (RANDOM % 1000) * 20))
"$FEDBFT" cluster init --nodes 4 --dir "$dir" --base-port "$base" --durability "$DURABILITY" >/dev/null
check "cluster init" test -f "$dir/cluster.json"
if ! "$FEDBFT" cluster up --dir "$dir" > "$tmp/up.out" 2>&1; then
    echo "FAIL cluster up"; cat "$tmp/up.out"; fails=1; exit 1
fi
echo "ok   cluster up"

cl=$dir/cluster.json
C() { "$FEDBFT" client --cluster "$cl" --key "$dir/clients/client0/node.key" --timeout 20000 "$@"; }
out=$(C put alpha one); check "put" test "${out%% *}" = OK
out=$(C get alpha); check "fast read sees the write" test "$out" = one
out=$(C get --ordered alpha); check "ordered read" test "$out" = one
out=$(C cas alpha one two); check "cas with the right value" test "${out%% *}" = OK
C cas alpha one three > "$tmp/cas.out"; rc=$?
check "cas with a stale value is refused" test $rc -eq 4
check "cas reports the current value" grep -q "current=two" "$tmp/cas.out"
out=$(C cas --absent beta x); check "cas --absent on a new key" test "${out%% *}" = OK
out=$(C del alpha); check "del" test "${out%% *}" = OK
C get alpha > /dev/null; rc=$?
check "get after del is NOT_FOUND" test $rc -eq 3

# 1,000 writes from 8 concurrent clients
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes 1000 --concurrency 8 --timeout 10000 > "$tmp/load.out" 2>&1
check "1000 writes committed" grep -q "writes=1000 failed=0" "$tmp/load.out"
echo "     figures: $(cat "$tmp/load.out")"

# A client whose key the cluster does not know is refused at the handshake.
"$FEDBFT" keygen --out "$tmp/rogue" > "$tmp/rogue.pub" 2>/dev/null
sed "s/\"clients\": *\[/\"clients\": [{\"id\": 4242, \"name\": \"rogue\", \"public_key\": \"$(cat "$tmp/rogue.pub")\"},/" "$cl" > "$tmp/rogue-cluster.json"
"$FEDBFT" client --cluster "$tmp/rogue-cluster.json" --key "$tmp/rogue/node.key" --timeout 3000 put x y > /dev/null 2>&1
check "a client with an unknown key gets no answer" test $? -ne 0

# Garbage and an oversized frame on a replica port: the connections are cut.
port0=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$cl" | head -1)
(exec 3<>"/dev/tcp/127.0.0.1/$port0" && printf 'GET / HTTP/1.1\r\n\r\nthis is not fedbft' >&3 && cat <&3 >/dev/null) 2>/dev/null
(exec 3<>"/dev/tcp/127.0.0.1/$port0" && printf '\x7f\xff\xff\xff' >&3 && head -c 1000000 /dev/zero >&3 && cat <&3 >/dev/null) 2>/dev/null
out=$(C put after-garbage yes); check "cluster commits after garbage peers" test "${out%% *}" = OK

# kill -9 a backup, keep writing, restart it, and time its catch-up.
"$FEDBFT" cluster kill 3 --dir "$dir" > /dev/null
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes 400 --concurrency 8 --timeout 10000 > "$tmp/load2.out" 2>&1
check "400 writes committed with a node down" grep -q "writes=400 failed=0" "$tmp/load2.out"
executed() { # executed I: node I's last executed seq, from its admin socket
    "$FEDBFT" ctl --socket "$dir/node$1/data/admin.sock" --json status 2>/dev/null |
        sed -n 's/.*"last_executed":\([0-9]*\).*/\1/p'
}
target=$(executed 0)
check "node 0 reports its progress on the admin socket" test -n "$target"
t0=$(date +%s.%N)
"$FEDBFT" cluster restart 3 --dir "$dir" > /dev/null
caught_up() { local e; e=$(executed 3); [ -n "$e" ] && [ "$e" -ge "$target" ]; }
wait_for "restarted node executes up to seq $target" 60 caught_up
t1=$(date +%s.%N)
echo "     figures: restarted node caught up to seq $target in $(awk "BEGIN{print $t1 - $t0}") s"
out=$(C put final yes); check "a write after the restart" test "${out%% *}" = OK
same_seq() { local a b c d; a=$(executed 0); b=$(executed 1); c=$(executed 2); d=$(executed 3)
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$c" = "$d" ]; }
wait_for "all four nodes reach the same seq" 30 same_seq

# Stop everything and compare what each node executed.
"$FEDBFT" cluster down --dir "$dir" > /dev/null
for i in 0 1 2 3; do "$FEDBFT" inspect --config "$dir/node$i/node.json" >> "$tmp/inspect.out" 2>&1; done
cat "$tmp/inspect.out" | sed 's/^/     /'
digests=$(awk '{print $3, $4}' "$tmp/inspect.out" | sort -u)
check "every node executed writes" test "$(grep -c 'last_executed=0 ' "$tmp/inspect.out")" -eq 0
check "all four nodes ended at the same seq with the same state digest" test "$(echo "$digests" | wc -l)" -eq 1

echo "$fails failure(s)"
test "$fails" -eq 0
