#!/usr/bin/env bash
# durability_test.sh - every acknowledged write survives the whole cluster
# crashing at once.  Four clients write continuously (`fedbft client load
# --acked`: each write acknowledged by f+1 matching replies is recorded);
# in the middle of the load all four nodes are killed with SIGKILL in one
# go, then restarted.  The cluster must commit again, and, once stopped,
# every node must hold every acknowledged write with its value (`fedbft
# inspect --check`).
#   durability_test.sh PATH_TO_FEDBFT [fsync|os]
# With fsync (sqlite synchronous FULL) a commit is on disk before any reply
# leaves the node.  With os (synchronous OFF) the writes reach the kernel
# before the reply, so a process crash loses nothing either (a power cut
# could); the test expects both to pass.
# Environment:
#   FEDBFT_DURABILITY_ACKS  acknowledged writes to wait for before the crash
#                           (default 1500)
#   FEDBFT_KEEP_TMP=1       keep the cluster directory (logs, data) after a failure
set -u
FEDBFT=${1:?usage: durability_test.sh PATH_TO_FEDBFT [fsync|os]}
DURABILITY=${2:-fsync}
ACKS=${FEDBFT_DURABILITY_ACKS:-1500}
tmp=$(mktemp -d /tmp/fedbft-durability-XXXXXX)
dir=$tmp/cluster
load_pid=
cleanup() { load_cluster_cleanup 20; }
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
t_start=$(now_ms)

# This test's ports: 9000..9999 (replica P+i, client P+100+i, HTTP P+200+i);
# the os run is offset by 50 so that the two modes can run side by side.
offset=0; [ "$DURABILITY" = os ] && offset=50
if ! cluster_start 9000 "$offset" --durability "$DURABILITY" --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
check "cluster up (durability $DURABILITY, base port $base)" \
    grep -q "\"durability\": \"$DURABILITY\"" "$dir/node0/node.json"

cl=$dir/cluster.json
acked=$tmp/acked
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --duration 3600 --concurrency 4 \
    --keep-going --timeout 3000 --prefix "dur$RANDOM" --acked "$acked" > "$tmp/load.out" 2>&1 &
load_pid=$!
has_acks() { [ "$(acked_count)" -ge "$1" ]; }
wait_for "$ACKS writes acknowledged" 60 has_acks "$ACKS"

# All four at once, while the load runs.
pids=$(cat "$dir"/node[0-3]/node.pid)
kill -9 $pids
gone() { local p; for p in $pids; do kill -0 "$p" 2>/dev/null && return 1; done; return 0; }
wait_for "all four nodes killed with SIGKILL" 10 gone
before=$(acked_count)
kill -TERM "$load_pid"
wait "$load_pid"
load_pid=
totals=$(grep '^writes=' "$tmp/load.out" | tail -n 1)
echo "     load: $totals"
check "no write acknowledged after the crash" test "$(acked_count)" -eq "$before"

t_restart=$(now_ms)
if ! "$FEDBFT" cluster up --dir "$dir" > "$tmp/up2.out" 2>&1; then
    echo "FAIL cluster up after the crash"; cat "$tmp/up2.out"; fails=$((fails + 1))
else
    echo "ok   cluster up after the crash"
fi
t_up=$(now_ms)
out=$("$FEDBFT" client --cluster "$cl" --key "$dir/clients/client0/node.key" --timeout 30000 put after-crash yes)
check "the cluster commits again after the crash" test "${out%% *}" = OK
t_commit=$(now_ms)
echo "after-crash yes" >> "$acked"
# More writes, past a few checkpoints: a node that lagged before the crash
# catches up by state transfer, which needs a checkpoint taken after the
# restart (snapshots to serve live in memory only).
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes 48 --concurrency 1 \
    --timeout 20000 --prefix after-crash --acked "$acked" > "$tmp/after.out" 2>&1
check "48 more writes after the crash committed" grep -q "writes=48 failed=0" "$tmp/after.out"
same_seq() { local e0 i; e0=$(node_executed 0); [ -n "$e0" ] || return 1
    for i in 1 2 3; do [ "$(node_executed "$i")" = "$e0" ] || return 1; done; }
wait_for "all four nodes reach the same seq" 60 same_seq

"$FEDBFT" cluster down --dir "$dir" > /dev/null
check_acked_on_every_node

t_end=$(now_ms)
echo "figure: durability $DURABILITY: $before writes acknowledged before all 4 nodes were killed, checked on every node after the restart; first commit $((t_commit - t_restart)) ms after the restart began (cluster up took $((t_up - t_restart)) ms); test took $(((t_end - t_start) / 1000)) s"
echo "$fails failure(s)"
test "$fails" -eq 0
