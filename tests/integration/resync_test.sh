#!/usr/bin/env bash
# resync_test.sh - damaged local state and state transfer over the network, on
# a real 4-node cluster holding N keys:
#   (a) node 3's fedbft.db truncated, then (second round) with two pages in
#       the middle bit-flipped: `fedbft run` refuses to start, exits non-zero,
#       and names the file and `--resync`;
#   (b) `cluster restart 3 --resync` wipes it and rebuilds it from its peers
#       (figure: catch-up time of the wiped node); sample keys are served and
#       the cluster commits with node 3 as a needed member of every quorum;
#   (c) a node stopped while the cluster runs past its log window catches up
#       by state transfer when restarted;
#   (d) (a resync asked for by a RESYNC file in the data directory, as in a
#       container) peers serving corrupted state chunks (`fault corrupt_state=true`) are
#       detected and counted (fedbft_state_transfers_total{result="bad_peer"});
#       once one peer is honest again the wiped node installs from it;
# and at the end every node holds the same state digest (`fedbft inspect`).
#   resync_test.sh PATH_TO_FEDBFT
# Environment:
#   FEDBFT_RESYNC_KEYS        keys written first (default 3000: the state
#                             spans several 1024-key chunks)
#   FEDBFT_RESYNC_VALUE_SIZE  bytes per value, 1..4096 (default 64); e.g.
#                             20000 keys of 4096 bytes make an 80 MB state
#                             whose transfer takes several seconds
set -u
FEDBFT=${1:?usage: resync_test.sh PATH_TO_FEDBFT}
NKEYS=${FEDBFT_RESYNC_KEYS:-3000}
VSIZE=${FEDBFT_RESYNC_VALUE_SIZE:-64}
tmp=$(mktemp -d /tmp/fedbft-resync-XXXXXX)
dir=$tmp/cluster
cleanup() {
    "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 25 "$dir/node$i/node.log" 2>/dev/null; done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# This test's ports: 6000..6999 (replica P+i, client P+100+i, HTTP P+200+i).
if ! cluster_start 6000 0 --durability os --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
echo "ok   cluster up (base port $base)"

cl=$dir/cluster.json
db=$dir/node3/data/fedbft.db
log3=$dir/node3/node.log
ctl() { # ctl I COMMAND [KEY=VALUE...]: node I's JSON reply
    local i=$1; shift
    "$FEDBFT" ctl --socket "$dir/node$i/data/admin.sock" --json --timeout 2000 "$@" 2>/dev/null
}
field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" | head -1; } # field NAME < JSON
executed() { ctl "$1" status | field last_executed; }
now_ms() { date +%s%3N; }
metric() { # metric I 'NAME{LABELS}': node I's value of that sample (empty if absent)
    ctl "$1" metrics | sed 's/\\"/"/g' | tr ',' '\n' | sed 's/^{//' |
        awk -v k="\"$2\":" 'index($0, k) == 1 { v = substr($0, length(k) + 1); sub(/[^0-9.].*/, "", v); print v; exit }'
}
C() { "$FEDBFT" client --cluster "$cl" --key "$dir/clients/client0/node.key" --timeout 30000 "$@"; }
load() { # load N: N writes from 8 clients, key load-n = n padded with v; true if all committed
    "$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes "$1" --concurrency 8 --value-size "$VSIZE" \
        --timeout 30000 > "$tmp/load.out" 2>&1
    grep -q "writes=$1 failed=0" "$tmp/load.out"
}
stopped() { "$FEDBFT" cluster status --dir "$dir" 2>/dev/null | grep -qE "^$1 +- +stopped"; }
stop_node() { # stop_node I: a clean stop through the admin socket
    ctl "$1" shutdown > /dev/null
    wait_for "node $1 stops" 30 stopped "$1"
}
installs() { grep -c 'state transfer: installed checkpoint' "$log3" 2>/dev/null; }
all_same() { local s; s=$(for i in 0 1 2 3; do echo "$(executed "$i")"; done | sort -u)
    [ "$(grep -c '^[0-9][0-9]*$' <<< "$s")" -eq 1 ] && [ "$(wc -l <<< "$s")" -eq 1 ]; }
caught_up() { # caught_up TARGET INSTALLS_BEFORE: node 3 at TARGET, a new install logged
    local e; e=$(executed 3)
    [ -n "$e" ] && [ "$e" -ge "$1" ] && [ "$(installs)" -gt "$2" ]
}
installed() { [ "$(installs)" -gt "$1" ]; } # installed INSTALLS_BEFORE: a new install logged
nudged_to() { # nudged_to TARGET: node 3 at TARGET; else one ordered op (a del that adds no key), false
    local e; e=$(executed 3)
    [ -n "$e" ] && [ "$e" -ge "$1" ] && return 0
    nudges=$((nudges + 1))
    C del nudge > /dev/null 2>&1
    return 1
}
nudges=0
abstain_until() { ctl 3 status | sed -n 's/.*"abstain_until_seq":\(-\{0,1\}[0-9]*\).*/\1/p'; }

t0=$(now_ms)
check "$NKEYS writes commit" load "$NKEYS"
echo "     $(cat "$tmp/load.out") ($(($(now_ms) - t0)) ms)"
wait_for "all four nodes at the same seq" 30 all_same

# --- (a) a damaged store: refuse to start, name the file and the way out
stop_node 3
cp "$db" "$tmp/good.db"
size=$(stat -c %s "$db")
runs() { # runs WHAT: `fedbft run` on node 3 must fail with the prominent message
    timeout 30 "$FEDBFT" run --config "$dir/node3/node.json" > "$tmp/run.out" 2>&1; rc=$?
    check "$1: fedbft run exits non-zero (exit $rc)" test $rc -ne 0 -a $rc -ne 124
    check "$1: the error names $db" grep -qF "$db" "$tmp/run.out"
    check "$1: the error names --resync" grep -qF -- "--resync" "$tmp/run.out"
    check "$1: the error is prominent (***)" grep -qF '***' "$tmp/run.out"
    sed 's/^/     | /' "$tmp/run.out" | head -3
}
truncate -s $((size / 2)) "$db"
runs "truncated to $((size / 2)) of $size bytes"
cp "$tmp/good.db" "$db"
# Invert every bit of a run of pages from the middle: one more page than the
# file's freelist holds (header offset 36), so at least one is in use.
be32() { od -An -tu1 -j"$1" -N4 "$db" | awk '{ print (($1 * 256 + $2) * 256 + $3) * 256 + $4 }'; }
psize=$(od -An -tu1 -j16 -N2 "$db" | awk '{ p = $1 * 256 + $2; print p == 1 ? 65536 : p }')
pages=$((size / psize))
nflip=$(($(be32 36) + 1))
page=$((pages / 2))
[ $((page + nflip)) -gt "$pages" ] && page=$((pages - nflip))
[ "$page" -lt 1 ] && page=1 && nflip=$((pages - 1))
flip=$(for i in $(seq 255 -1 0); do printf '\\%03o' "$i"; done)
dd if="$tmp/good.db" bs="$psize" skip="$page" count="$nflip" status=none | LC_ALL=C tr '\000-\377' "$flip" |
    dd of="$db" bs="$psize" seek="$page" conv=notrunc status=none
check "pages $page..$((page + nflip - 1)) of $pages flipped (the freelist holds $((nflip - 1)))" \
    sh -c "! cmp -s '$db' '$tmp/good.db'"
runs "bytes flipped in the middle"

# --- (b) --resync: wipe and rebuild from the peers
target=$(executed 0)
before=$(installs)
t0=$(now_ms)
"$FEDBFT" cluster restart 3 --dir "$dir" --resync > "$tmp/restart.out" 2>&1
check "cluster restart 3 --resync starts the node" test $? -eq 0
check "the node logs that it deleted its state" grep -q 'resync: deleted the local state' "$log3"
# No writes meanwhile: the peers' periodic CHECKPOINT messages alone must
# show it a certified checkpoint to fetch.
wait_for "the wiped node installs a checkpoint by state transfer (no writes meanwhile)" 30 installed "$before"
t_inst=$(now_ms)
# A resynced replica votes for nothing up to a log window past the checkpoint
# it learns (it may have voted there before the wipe), so it is not helped
# like a lagging voter: a write per poll shows it the cluster's last commits.
wait_for "the wiped node executes up to seq $target" 60 nudged_to "$target"
took=$(($(now_ms) - t0))
line=$(grep 'state transfer: installed checkpoint' "$log3" | tail -1 | sed 's/.*state transfer: //')
echo "figure: wiped node holding $NKEYS keys ($VSIZE-byte values) installed its state in" \
     "$((t_inst - t0)) ms and caught up in $took ms after $nudges nudging writes ($line)"
have_metrics=0
if [ -n "$(metric 3 'fedbft_state_transfers_total{result="installed"}')" ]; then
    have_metrics=1
    check "node 3 counts the install" test "$(metric 3 'fedbft_state_transfers_total{result="installed"}')" -ge 1
    got=$(metric 3 fedbft_state_chunks_received_total)
    check "node 3 received $(((NKEYS + 1023) / 1024))+ chunks ($got)" test "${got:-0}" -ge $(((NKEYS + 1023) / 1024))
    served=0; for i in 0 1 2; do v=$(metric "$i" fedbft_state_chunks_served_total); served=$((served + ${v:-0})); done
    check "its peers served those chunks ($served)" test "$served" -ge "${got:-1}"
else
    skip "state transfer metrics: fedbft_state_transfers_total not exported by this build"
fi
# Once the cluster is past the seq it abstains up to, node 3 votes again.
ab=$(abstain_until)
echo "     node 3 abstain_until_seq: ${ab:-not reported}"
rounds=0
while [ "${ab:-0}" -gt 0 ] && [ "$(executed 0)" -le "$ab" ] && [ $rounds -lt 20 ]; do
    load 200 || break
    rounds=$((rounds + 1))
done
check "the cluster passed node 3's abstain window (executed $(executed 0) > ${ab:-0})" \
    test "$(executed 0)" -gt "${ab:-0}"
wait_for "all four at the same seq" 60 all_same
# With node 1 stopped every quorum (3 of 4) needs node 3: reads and writes go
# through it.
stop_node 1
bad=0
for k in 0 1 $((NKEYS / 3)) $((NKEYS / 2)) $((NKEYS - 2)) $((NKEYS - 1)); do
    v=$(C get "load-$k" 2>/dev/null)
    [[ "$v" =~ ^${k}v*$ ]] || { bad=$((bad + 1)); echo "     load-$k read as '${v:0:20}'"; }
done
check "sample keys are served with node 1 down (node 3 in every quorum)" test $bad -eq 0
e0=$(executed 0)
check "100 writes commit with node 1 down (node 3 in every quorum)" load 100
check "node 3 executed them ($e0 -> $(executed 3))" test "$(executed 3)" -gt "${e0:-0}"
"$FEDBFT" cluster restart 1 --dir "$dir" > /dev/null 2>&1
check "node 1 restarted" test $? -eq 0
wait_for "all four at the same seq" 60 all_same

# --- (c) a node stopped past the log window catches up by state transfer
window=$(ctl 0 config | field log_window)
"$FEDBFT" cluster kill 3 --dir "$dir" > /dev/null
e3=$(executed 0)
rounds=0
while [ "$(executed 0)" -le $((e3 + 2 * ${window:-64})) ] && [ $rounds -lt 20 ]; do
    load 400 || break
    rounds=$((rounds + 1))
done
target=$(executed 0)
check "the cluster ran past node 3's log window ($e3 -> $target, window ${window:-?})" \
    test "$target" -gt $((e3 + 2 * ${window:-64}))
before=$(installs)
t0=$(now_ms)
"$FEDBFT" cluster restart 3 --dir "$dir" > /dev/null 2>&1
check "node 3 restarted" test $? -eq 0
wait_for "the long-stopped node catches up to seq $target by state transfer" 60 caught_up "$target" "$before"
took=$(($(now_ms) - t0))
echo "figure: node stopped for $((target - e3)) seqs (log window ${window:-?}) caught up in $took ms by state transfer"
if [ $have_metrics -eq 1 ]; then
    check "node 3 counts the install" test "$(metric 3 'fedbft_state_transfers_total{result="installed"}')" -ge 1
fi

# --- (d) peers serving corrupted chunks: detected, counted, another peer used
bad_peers() { metric 3 'fedbft_state_transfers_total{result="bad_peer"}'; }
if ctl 0 fault | grep -q corrupt_state; then
    # Every peer lies at first, whichever node 3 asks first; then replica 2
    # turns honest and node 3 must get the state from it.
    ok=0; for i in 0 1 2; do ctl "$i" fault corrupt_state=true > /dev/null || ok=1; done
    check "fault corrupt_state=true on nodes 0, 1 and 2" test $ok -eq 0
    stop_node 3
    target=$(executed 0)
    before=$(installs)
    # This resync is asked for the way a container or a systemd unit does
    # it: a RESYNC file in the data directory, no --resync on the command line.
    touch "$dir/node3/data/RESYNC"
    "$FEDBFT" cluster restart 3 --dir "$dir" > /dev/null 2>&1
    check "node 3 restarted with DATA_DIR/RESYNC" test $? -eq 0
    check "node 3 logs the resync the RESYNC file asked for" \
        grep -q 'resync (asked for by RESYNC in the data directory): deleted the local state' "$log3"
    check "node 3 deleted the RESYNC file (a later restart keeps its state)" \
        test ! -e "$dir/node3/data/RESYNC"
    rejected() { [ "$(bad_peers)" -ge 2 ] 2>/dev/null; }
    wait_for "node 3 rejects the corrupted state of two peers" 30 rejected
    check "node 3 installed nothing from the lying peers" test "$(installs)" -eq "$before"
    grep 'state transfer: replica [0-2] ' "$log3" | tail -2 | sed 's/^/     | /'
    t0=$(now_ms)
    ctl 2 fault corrupt_state=false > /dev/null
    check "replica 2 serves honest state again" test $? -eq 0
    wait_for "node 3 installs from the honest peer" 30 installed "$before"
    took=$(($(now_ms) - t0))
    wait_for "node 3 executes up to seq $target" 60 nudged_to "$target"
    badp=$(bad_peers)
    check "fedbft_state_transfers_total{result=\"bad_peer\"} on node 3 counts them (${badp:-absent})" \
        test "${badp:-0}" -ge 2
    check "node 3 logs the peers it abandoned" grep -q 'state transfer: replica [0-2] .*trying another' "$log3"
    line=$(grep 'state transfer: installed checkpoint' "$log3" | tail -1 | sed 's/.*state transfer: //')
    echo "figure: wiped node whose peers served corrupted chunks: $badp bad peers detected;" \
         "installed $took ms after one turned honest ($line)"
    for i in 0 1; do ctl "$i" fault corrupt_state=false > /dev/null; done
else
    skip "(d) corrupted chunks: this build's fault command has no corrupt_state flag"
fi

# --- the end: writes still commit, and every node holds the same state
check "writes after all of it" load 100
wait_for "all four at the same seq" 60 all_same
"$FEDBFT" cluster down --dir "$dir" > /dev/null
for i in 0 1 2 3; do "$FEDBFT" inspect --config "$dir/node$i/node.json" >> "$tmp/inspect.out" 2>&1; done
sed 's/^/     /' "$tmp/inspect.out"
check "every node holds the same seq, state digest and key count" \
    test "$(awk '{print $3, $4, $5}' "$tmp/inspect.out" | sort -u | wc -l)" -eq 1
check "the state holds the $NKEYS keys" test "$(grep -c " keys=$NKEYS " "$tmp/inspect.out")" -eq 4

echo "$fails failure(s), $skips skipped"
test "$fails" -eq 0
