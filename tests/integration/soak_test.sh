#!/usr/bin/env bash
# soak_test.sh - memory under steady load on a real 4-node cluster
# (durability os).  Four clients write new keys for FEDBFT_SOAK_SECS seconds
# (`fedbft client load --duration`); each node's resident set size (VmRSS
# from /proc/PID/status) is measured after a warm-up (a sixth of the run), at
# the middle and at the end, each as the lowest of the samples taken every
# 0.5 s over the 5 s before that point (a passing spike, such as a state
# transfer's staging, is not growth; a leak only grows, so it still shows),
# and printed every ~10 s in between for the record.
# Prints, per node:
#   figure: soak node I rss start X mid Y ... end Z MiB requests N
# with the second half cut into four equal segments (points at 1/2, 5/8, 3/4,
# 7/8 and the end of the run), and fails if a node grows in EVERY segment by
# more than max(1.5 MiB, 5% of its size at the middle), or by more than
# 56 MiB from the middle to the end in all.  Why: from the middle to the end a
# node serves as many requests as in the whole first half, and memory that
# grows with the number of requests (a leak, an unbounded queue or cache)
# grows in every segment; at the default 120 s (some 9,000+ requests per
# 15 s segment on a small machine) that catches a leak of roughly 170 bytes
# per request.  What may grow legitimately is bounded and fills once, then
# stays (malloc keeps its high-water mark): sqlite's page cache and WAL index,
# malloc arenas of the store and verify threads, the client table, reply
# cache and log window, and the send queue to each peer, up to
# send_queue_bytes (16 MiB) while that peer is slow.  Such a step shows in
# one or two adjacent segments, not all four: CI runs under load saw steps of
# 13 MiB (in 10 s) and 8 MiB (over 20 s, across a segment point), each flat
# afterwards.  56 MiB = three peers' send queues and 8 MiB more caps them.
# The cluster must also stay healthy: no write fails, every node stays up and
# all end at the same executed seq.
#   soak_test.sh PATH_TO_FEDBFT
# Under AddressSanitizer (detected from the binary, or FEDBFT_SANITIZED=1 set
# by CMake for a FEDBFT_SANITIZE build) RSS means nothing (shadow memory,
# quarantine): a 20 s run checks only that the cluster stays healthy.
# Environment:
#   FEDBFT_SOAK_SECS   seconds of load (default 120; at least 12)
#   FEDBFT_KEEP_TMP=1  keep the cluster directory (logs, data) after a failure
set -u
FEDBFT=${1:?usage: soak_test.sh PATH_TO_FEDBFT}
SECS=${FEDBFT_SOAK_SECS:-120}
tmp=$(mktemp -d /tmp/fedbft-soak-XXXXXX)
dir=$tmp/cluster
load_pid=
cleanup() { load_cluster_cleanup 15; }
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

measure=1
if fedbft_sanitized; then
    measure=0
    [ "$SECS" -gt 20 ] && SECS=20
    echo "     sanitizer build: RSS is not meaningful; a ${SECS} s run checks health only"
fi
[ "$SECS" -ge 12 ] || { echo "FEDBFT_SOAK_SECS must be at least 12"; exit 2; }
warm=$((SECS / 6))
# The points of the second half: 1/2, 5/8, 3/4, 7/8 (the end is measured last).
points=($((SECS / 2)) $((SECS * 5 / 8)) $((SECS * 3 / 4)) $((SECS * 7 / 8)))

# This test's ports: 3000..3999 (replica P+i, client P+100+i, HTTP P+200+i).
if ! cluster_start 3000 0 --durability os --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
echo "ok   cluster up (base port $base)"

"$FEDBFT" client --cluster "$dir/cluster.json" --keys "$dir/clients" load --duration "$SECS" \
    --concurrency 4 --keep-going --timeout 30000 --prefix soak > "$tmp/load.out" 2>&1 &
load_pid=$!
t0=$SECONDS

all_alive() { local i pid; for i in 0 1 2 3; do
    pid=$(node_pid "$i") && kill -0 "$pid" 2>/dev/null || return 1; done; }
rss_mib() { local k; k=$(node_rss_kib "$1"); [ -n "$k" ] && awk -v k="$k" 'BEGIN{printf "%.1f", k / 1024}'; }
sample() { local i; for i in 0 1 2 3; do printf '%s ' "$(rss_mib "$i" || echo -)"; done; }
# Each figure is the lowest sample of a node over the WIN seconds up to that
# point (every 0.5 s): a passing spike, such as a state transfer's staging,
# is not taken for growth, while a leak, which only grows, still shows.
WIN=$((SECS / 16)); [ $WIN -gt 5 ] && WIN=5; [ $WIN -lt 1 ] && WIN=1
declare -a start_rss p0_rss p1_rss p2_rss p3_rss end_rss
lower() { # lower ARRAY: lower each node's entry of ARRAY to its RSS now
    local -n a=$1; local i r
    for i in 0 1 2 3; do
        r=$(rss_mib "$i") || continue
        if [ -z "${a[$i]:-}" ] || awk -v r="$r" -v m="${a[$i]}" 'BEGIN{exit !(r < m)}'; then a[$i]=$r; fi
    done
}
series=
next_series=10
alive=1
while kill -0 "$load_pid" 2>/dev/null; do
    t=$((SECONDS - t0))
    if ! all_alive; then alive=0; break; fi
    [ "$t" -ge $((warm - WIN)) ] && [ "$t" -lt "$warm" ] && lower start_rss
    for k in 0 1 2 3; do
        [ "$t" -ge $((points[k] - WIN)) ] && [ "$t" -lt "${points[k]}" ] && lower "p${k}_rss"
    done
    [ "$t" -ge $((SECS - WIN)) ] && lower end_rss
    if [ "$t" -ge "$next_series" ]; then series="$series
     t=${t}s rss MiB: $(sample)"; next_series=$((next_series + 10)); fi
    sleep 0.5
done
check "every node stays up through the load" test "$alive" -eq 1
wait "$load_pid"
load_pid=
lower end_rss
totals=$(grep '^writes=' "$tmp/load.out" | tail -n 1)
echo "     load: $totals"
echo "     rss series (nodes 0..3):$series"
load_figure() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<< " $totals"; }
requests=$(load_figure writes)
check "the load ran ($requests writes) with no failed write" test "${requests:-0}" -gt 0 -a "$(load_figure failed)" = 0

same_seq() { local e0 i; e0=$(node_executed 0); [ -n "$e0" ] || return 1
    for i in 1 2 3; do [ "$(node_executed "$i")" = "$e0" ] || return 1; done; }
wait_for "all four nodes end at the same seq" 60 same_seq

for i in 0 1 2 3; do
    if [ "$measure" -eq 0 ]; then
        echo "figure: soak node $i rss not measured (sanitizer build) requests $requests"
        continue
    fi
    s=${start_rss[$i]:-?} e=${end_rss[$i]:-?}
    ps="${p0_rss[$i]:-0} ${p1_rss[$i]:-0} ${p2_rss[$i]:-0} ${p3_rss[$i]:-0} $e"
    m=${p0_rss[$i]:-?}
    echo "figure: soak node $i rss start $s mid $m 5/8 ${p1_rss[$i]:-?} 3/4 ${p2_rss[$i]:-?}" \
         "7/8 ${p3_rss[$i]:-?} end $e MiB requests $requests"
    # no_trend: not every segment grows by more than max(1.5 MiB, 5% of mid)
    no_trend() { awk -v ps="$ps" 'BEGIN{ n = split(ps, p, " "); d = p[1] * 0.05; if (d < 1.5) d = 1.5
        for (k = 1; k <= n; k++) if (!(p[k] > 0)) exit 1
        for (k = 2; k <= n; k++) if (p[k] - p[k - 1] <= d) exit 0
        exit 1 }'; }
    check "node $i: rss does not grow in all four segments of the second half by more than max(1.5 MiB, 5%) ($(tr ' ' '>' <<< "$ps" | sed 's/>/ -> /g') MiB)" no_trend
    capped() { awk -v m="$m" -v e="$e" 'BEGIN{ exit !(m > 0 && e - m <= 56) }'; }
    check "node $i: rss from the middle to the end grows by at most 56 MiB ($m -> $e MiB)" capped
done
echo "$fails failure(s)"
test "$fails" -eq 0
