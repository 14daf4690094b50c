#!/usr/bin/env bash
# ablation_test.sh - the node.json benchmark switches on real 4-node clusters:
# "verify": "inline", "sig_cache": false and "digest_cache": false, each set
# in every node.json of its own cluster, against a cluster with the defaults.
# Every cluster commits writes and reads them back; the node metrics then show
# that the switch really acted:
#   inline       no verification batch is ever observed
#                (fedbft_verify_batch_size count 0), yet
#                fedbft_signatures_verified_total grows, and the node runs
#                fewer threads (no verifier pool);
#   sig_cache    fedbft_sigcache_hits_total and _misses_total stay 0, and more
#                signatures are verified per request than with the cache;
#   digest_cache more request digests are computed per request than with reuse.
# Requests only reach a replica twice (directly and relayed) when a client
# retransmits to every replica, so each cluster also runs a "slow primary"
# phase: node 0's outgoing replica links are delayed past the client's 1 s
# retransmission, and node 0 then gets each request again from the client and
# forwarded by each backup.  Those copies are what the caches save; the
# per-request figures compared below are node 0's over that phase.  Every
# cluster runs batch_max_requests 1 (which must be accepted: no batching), so
# the per-request protocol traffic is the same in all of them.
#   ablation_test.sh PATH_TO_FEDBFT
set -u
FEDBFT=${1:?usage: ablation_test.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-ablation-XXXXXX)
dir=
cleanup() {
    for d in "$tmp"/*/; do
        [ -f "$d/cluster.json" ] && "$FEDBFT" cluster down --dir "$d" >/dev/null 2>&1
    done
    if [ "${fails:-1}" -ne 0 ] && [ -n "$dir" ]; then
        for i in 0 1 2 3; do echo "--- $(basename "$dir") node$i.log (tail)"; tail -n 15 "$dir/node$i/node.log" 2>/dev/null; done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# Ports 63000-64999 belong to this test; each cluster takes P..P+203.
slot=$((RANDOM % 2))
SLOW_MS=1700 # node 0's outgoing delay in the slow phase: past the client's 1 s retransmission

ctl() { # ctl I COMMAND [KEY=VALUE...]: the JSON reply of node I of $dir
    local i=$1; shift
    "$FEDBFT" ctl --socket "$dir/node$i/data/admin.sock" --json --timeout 5000 "$@"
}
metric() { # metric I KEY: a counter of node I (a histogram's count), from the admin socket
    ctl "$1" metrics 2>/dev/null | tr ',' '\n' | grep -F "\"$2\":" | head -1 | sed 's/.*://'
}
sum_metric() { # sum_metric KEY: the counter summed over the four nodes
    local i s=0 v
    for i in 0 1 2 3; do v=$(metric "$i" "$1"); s=$((s + ${v:-0})); done
    echo "$s"
}
per() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "nan" && b != "nan" && a + 0 >= b + 0) }'; }
C() { "$FEDBFT" client --cluster "$dir/cluster.json" --key "$dir/clients/client0/node.key" --timeout 20000 "$@"; }
load() { "$FEDBFT" client --cluster "$dir/cluster.json" --keys "$dir/clients" load --timeout 20000 "$@"; }
threads() { # threads I: node I's thread count (empty without /proc)
    local pid; pid=$(cat "$dir/node$1/node.pid" 2>/dev/null)
    [ -n "$pid" ] && [ -d "/proc/$pid/task" ] && ls "/proc/$pid/task" | wc -l
}

executed() { ctl "$1" status 2>/dev/null | sed -n 's/.*"last_executed":\([0-9]*\).*/\1/p'; }
settled() { local a b c d; a=$(executed 0); b=$(executed 1); c=$(executed 2); d=$(executed 3)
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$c" = "$d" ]; }

SIGS=fedbft_signatures_verified_total
REQ_DIGESTS='fedbft_digest_computations_total{kind=\"request\"}'

# run_cluster NAME INDEX SED_EXPR: init, switch, start, write, read, measure.
# Leaves the cluster running; sets slow_sigs, slow_digests (node 0, per
# request of the slow phase).
run_cluster() {
    local name=$1 idx=$2 i
    local -a sw=()
    [ -n "$3" ] && sw=(-e "$3")
    dir=$tmp/$name
    local base=$((63000 + slot * 1000 + idx * 250))
    "$FEDBFT" cluster init --nodes 4 --dir "$dir" --base-port "$base" --model none --durability os >/dev/null
    for i in 0 1 2 3; do
        sed -i -e 's/"batch_max_requests": *[0-9]*/"batch_max_requests": 1/' \
            -e 's/"request_timeout_ms": *[0-9]*/"request_timeout_ms": 10000/' \
            "${sw[@]}" "$dir/node$i/node.json"
    done
    check "$name: every node.json has batch_max_requests 1" \
        test "$(grep -l '"batch_max_requests": 1,' "$dir"/node?/node.json | wc -l)" -eq 4
    if ! "$FEDBFT" cluster up --dir "$dir" > "$tmp/$name.up" 2>&1; then
        echo "FAIL $name: cluster up"; cat "$tmp/$name.up"; fails=$((fails + 1)); return 1
    fi
    echo "ok   $name: cluster up"

    local out
    out=$(C put ablation "$name"); check "$name: put" test "${out%% *}" = OK
    out=$(C get ablation); check "$name: the value reads back" test "$out" = "$name"
    load --writes 48 --concurrency 4 > "$tmp/$name.load" 2>&1
    check "$name: 48 writes committed" grep -q "writes=48 failed=0" "$tmp/$name.load"
    C get load-7 > /dev/null; check "$name: a loaded key reads back" test $? -eq 0

    # The slow primary phase (see the top of the file), from a settled cluster
    # so that node 0's figures cover these 8 requests only.
    wait_for "$name: all four nodes at the same seq" 20 settled
    local s0 d0 r0 e0
    s0=$(metric 0 "$SIGS"); d0=$(metric 0 "$REQ_DIGESTS"); r0=$(metric 0 fedbft_requests_total)
    ctl 0 fault peer=all delay_ms=$SLOW_MS > /dev/null 2>&1
    load --writes 8 --concurrency 8 > "$tmp/$name.slow" 2>&1
    check "$name: 8 writes committed past a slow primary" grep -q "writes=8 failed=0" "$tmp/$name.slow"
    ctl 0 fault clear=true > /dev/null 2>&1
    e0=$((${r0:-0} + 8))
    node0_done() { local r; r=$(metric 0 fedbft_requests_total); [ "${r:-0}" -ge "$e0" ]; }
    wait_for "$name: node 0 executed them too" 20 node0_done
    local s1 d1 r1
    s1=$(metric 0 "$SIGS"); d1=$(metric 0 "$REQ_DIGESTS"); r1=$(metric 0 fedbft_requests_total)
    slow_sigs=$(per $((${s1:-0} - ${s0:-0})) $((${r1:-0} - ${r0:-0})))
    slow_digests=$(per $((${d1:-0} - ${d0:-0})) $((${r1:-0} - ${r0:-0})))
    echo "     figures: $name: node 0 over the slow phase: $slow_sigs signatures verified and" \
         "$slow_digests request digests per request"
}

# --- defaults: the mechanisms on, and the metrics that should see them
run_cluster default 0 ""
def_sigs=$slow_sigs def_digests=$slow_digests
def_threads=$(threads 0)
check "default: verification batches observed" ge "$(sum_metric fedbft_verify_batch_size)" 1
check "default: signatures verified" ge "$(sum_metric "$SIGS")" 1
check "default: the signature cache answers relayed copies" ge "$(sum_metric fedbft_sigcache_hits_total)" 1
# The fourth replica's PREPARE or COMMIT usually comes after the quorum: it is
# dropped before its signature is checked (pbft_vote_skip).
check "default: votes after their quorum skipped unverified" \
    ge "$(sum_metric fedbft_votes_skipped_total)" 1
check "default: node log names the batch verifier" grep -q "signatures verified in batches" "$dir/node0/node.log"
ctl 0 config > "$tmp/default.config" 2>&1
for kv in '"verify":"batch"' '"sig_cache":true' '"digest_cache":true'; do
    check "default: config shows $kv" grep -qF "$kv" "$tmp/default.config"
done
"$FEDBFT" cluster down --dir "$dir" > /dev/null

# --- verify: inline
run_cluster inline 1 's/"verify": *"batch"/"verify": "inline"/'
check "inline: every node.json says inline" test "$(grep -l '"verify": "inline"' "$dir"/node?/node.json | wc -l)" -eq 4
batches=$(sum_metric fedbft_verify_batch_size)
check "inline: no verification batch observed (count $batches)" test "${batches:-x}" = 0
sigs1=$(sum_metric "$SIGS")
out=$(C put after-inline yes); check "inline: another put" test "${out%% *}" = OK
sigs2=$(sum_metric "$SIGS")
check "inline: signatures_verified grows ($sigs1 -> $sigs2)" test "$sigs2" -gt "$sigs1"
check "inline: the cache still answers relayed copies" ge "$(sum_metric fedbft_sigcache_hits_total)" 1
check "inline: node log warns of the switch" grep -q "benchmark switches.*verify=inline" "$dir/node0/node.log"
ctl 0 config > "$tmp/inline.config" 2>&1
check "inline: config shows verify inline" grep -q '"verify":"inline"' "$tmp/inline.config"
inl_threads=$(threads 0)
if [ -n "$def_threads" ] && [ -n "$inl_threads" ]; then
    check "inline: no verifier threads ($inl_threads threads, $def_threads with batch)" \
        test "$inl_threads" -lt "$def_threads"
else
    skip "inline: thread count (no /proc)"
fi
"$FEDBFT" cluster down --dir "$dir" > /dev/null

# --- sig_cache: false
run_cluster nosigcache 2 's/"sig_cache": *true/"sig_cache": false/'
check "nosigcache: every node.json says false" test "$(grep -l '"sig_cache": false' "$dir"/node?/node.json | wc -l)" -eq 4
hits=$(sum_metric fedbft_sigcache_hits_total) misses=$(sum_metric fedbft_sigcache_misses_total)
check "nosigcache: no cache hits ($hits) or lookups ($misses)" test "$hits" = 0 -a "$misses" = 0
# Node 0 gets each slow request 5 times (client, retransmission, 3 forwards):
# 4 more checks per request than with the cache.
check "nosigcache: more signatures verified per request ($slow_sigs vs $def_sigs)" \
    ge "$slow_sigs" "$(awk -v d="$def_sigs" 'BEGIN { print d + 2 }')"
check "nosigcache: node log warns of the switch" grep -q "benchmark switches.*sig_cache=false" "$dir/node0/node.log"
"$FEDBFT" cluster down --dir "$dir" > /dev/null

# --- digest_cache: false
run_cluster nodigestcache 3 's/"digest_cache": *true/"digest_cache": false/'
check "nodigestcache: every node.json says false" test "$(grep -l '"digest_cache": false' "$dir"/node?/node.json | wc -l)" -eq 4
# The same 5 copies: one digest each instead of one for all.
check "nodigestcache: more request digests per request ($slow_digests vs $def_digests)" \
    ge "$slow_digests" "$(awk -v d="$def_digests" 'BEGIN { print d + 2 }')"
check "nodigestcache: the signature cache is still on" ge "$(sum_metric fedbft_sigcache_hits_total)" 1
check "nodigestcache: node log warns of the switch" grep -q "benchmark switches.*digest_cache=false" "$dir/node0/node.log"
"$FEDBFT" cluster down --dir "$dir" > /dev/null

echo "$fails failure(s)"
test "$fails" -eq 0
