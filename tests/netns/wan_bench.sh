#!/usr/bin/env bash
# wan_bench.sh - `fedbft bench` across an emulated WAN: 4 nodes and the
# clients each in their own network namespace (lib.sh), every link 10 ms one
# way (no jitter, no loss), once per batch size (node.json
# "batch_max_requests": 1, 10, 100 and the maximum the config accepts), each
# on a fresh cluster with the same closed-loop load.  Prints one table:
#   batch max | throughput ops/s | p50 ms | p99 ms | mean batch
# (mean batch: requests per PRE-PREPARE over the measured window, from the
# nodes' metrics).  A consensus round costs ~4 one-way delays whatever the
# batch, and the primary keeps at most log_window/2 batches in flight, so
# without batching throughput is capped near (log_window/2) per round trip.
#   wan_bench.sh PATH_TO_FEDBFT [PATH_TO_FB_NETEM] [--quick]
# --quick: batch max 1 and the maximum, 64 clients, 1 s warm-up + 3 s each;
# checks that every run completed operations without errors or timeouts and
# that the mean batch is 1 at batch max 1 and above 1 at the maximum (the
# ctest netns_wan_bench_smoke).  Exits 77 (skip) where namespaces or a link
# emulator are missing.
# Environment (full run):
#   FEDBFT_WAN_BATCHES  batch sizes (default "1 10 100 65536")
#   FEDBFT_WAN_CLIENTS  closed-loop clients (default 256)
#   FEDBFT_WAN_SECS     seconds measured per batch size (default 10)
#   FEDBFT_WAN_WARMUP   seconds of warm-up per batch size (default 3)
#   FEDBFT_WAN_DELAY_MS one-way delay of every link (default 10)
#   FEDBFT_NETNS_LINKS  netem | fb_netem: force one link emulator
set -u
FEDBFT=${1:?usage: wan_bench.sh PATH_TO_FEDBFT [PATH_TO_FB_NETEM] [--quick]}
FB_NETEM_ARG=${2:-}
[ "$FB_NETEM_ARG" = --quick ] && { FB_NETEM_ARG=; set -- "$1" "" --quick; }
QUICK=0
[ "${3:-}" = --quick ] && QUICK=1
MAX_BATCH=65536 # node/config.c: batch_max_requests is 1..2^16
if [ $QUICK -eq 1 ]; then
    BATCHES="1 $MAX_BATCH" CLIENTS=64 SECS=3 WARMUP=1
else
    BATCHES=${FEDBFT_WAN_BATCHES:-1 10 100 $MAX_BATCH}
    CLIENTS=${FEDBFT_WAN_CLIENTS:-256}
    SECS=${FEDBFT_WAN_SECS:-10}
    WARMUP=${FEDBFT_WAN_WARMUP:-3}
fi
DELAY=${FEDBFT_WAN_DELAY_MS:-10}
tmp=$(mktemp -d /tmp/fedbft-netns-bench-XXXXXX)
dir=$tmp/cluster
cleanup() {
    netns_cleanup
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 10 "$dir/node$i/node.log" 2> /dev/null; done
        for f in "$tmp"/bench-*.err; do [ -f "$f" ] && { echo "--- $(basename "$f") (tail)"; tail -n 5 "$f"; }; done
    fi
    if [ "${fails:-1}" -ne 0 ] && [ -n "${FEDBFT_KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
t_start=$SECONDS

netns_init "$FEDBFT" "$FB_NETEM_ARG" || { echo "FAIL namespaces"; fails=1; exit 1; }
netns_links "$DELAY" 0 0 || { echo "FAIL link emulation"; fails=1; exit 1; }

# One bench run on a fresh cluster with batch_max_requests B.  A batch is
# capped by bytes too: batch_max_bytes is raised far above B requests (a
# PRE-PREPARE carries its batch in one frame, so max_frame and the send
# queue grow with it).
bench_one() {
    local b=$1
    netns_nodes_stop
    netns_cluster_init --durability os --model none --clients "$CLIENTS" || return 1
    set_node_knob batch_max_requests "$b" && set_node_knob max_frame 67108864 &&
        set_node_knob batch_max_bytes 33554432 && set_node_knob send_queue_bytes 268435456 || return 1
    netns_nodes_start || return 1
    ip netns exec "$(netns_ns cl)" "$FEDBFT" bench --cluster "$dir/cluster.json" --keys "$dir/clients" \
        --clients "$CLIENTS" --warmup "$WARMUP" --duration "$SECS" --timeout 30000 --json \
        > "$tmp/bench-$b.json" 2> "$tmp/bench-$b.err"
}

# row B: "B OPS_S P50_MS P99_MS MEAN_BATCH OPS ERRORS TIMEOUTS VIEW_CHANGES" from its JSON
row() {
    python3 - "$1" "$tmp/bench-$1.json" << 'EOF'
import json, sys
b, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
lat = r.get("latency_us") or {}
def ms(v): return "%.1f" % (v / 1000.0) if isinstance(v, (int, float)) else "n/a"
mb = (r.get("signatures") or {}).get("mean_batch_size")
views = r.get("view_changes")
print(b, "%.0f" % r.get("throughput_ops_s", 0), ms(lat.get("p50")), ms(lat.get("p99")),
      "%.1f" % mb if isinstance(mb, (int, float)) else "n/a",
      r.get("ops", 0), r.get("errors", 0), r.get("timeouts", 0),
      views if isinstance(views, int) else "n/a")
EOF
}

echo "     $CLIENTS clients (closed loop), ${WARMUP} s warm-up + ${SECS} s measured per batch size;" \
     "log_window 64 (at most 32 batches in flight)"
rows=()
for b in $BATCHES; do
    cpu0=$(netns_shaper_cpu)
    if bench_one "$b"; then
        [ "$netns_links_path" = fb_netem ] &&
            echo "     batch max $b: fb_netem used $(awk -v a="$cpu0" -v b="$(netns_shaper_cpu)" 'BEGIN { printf "%.1f", b - a }') CPU-s (all 5 hosts)"
        r=$(row "$b") || r=
        check "bench at batch max $b completed (${r:-no JSON})" test -n "$r"
        [ -n "$r" ] && rows+=("$r")
    else
        echo "FAIL bench at batch max $b (exit status $?)"; fails=$((fails + 1))
    fi
done
netns_nodes_stop

echo
echo "WAN benchmark: 4 nodes, every link ${DELAY} ms one way ($netns_links_path), $CLIENTS clients"
printf '%-10s | %-16s | %-8s | %-8s | %s\n' "batch max" "throughput ops/s" "p50 ms" "p99 ms" "mean batch"
printf -- '-----------+------------------+----------+----------+-----------\n'
for r in "${rows[@]}"; do
    read -r b ops p50 p99 mb _ <<< "$r"
    printf '%-10s | %-16s | %-8s | %-8s | %s\n' "$b" "$ops" "$p50" "$p99" "$mb"
done
echo
for r in "${rows[@]}"; do
    read -r b ops p50 p99 mb _ <<< "$r"
    echo "figure: netns WAN bench ${DELAY} ms one way, batch max $b: $ops ops/s, p50 $p50 ms, p99 $p99 ms, mean batch $mb"
done

for r in "${rows[@]}"; do
    read -r b ops _ _ mb n errors timeouts views <<< "$r"
    check "batch max $b: $n ops, no errors ($errors) or timeouts ($timeouts); view changes $views" \
        test "$n" -gt 0 -a "$errors" -eq 0 -a "$timeouts" -eq 0
    if [ $QUICK -eq 1 ]; then
        if [ "$b" = 1 ]; then
            check "batch max 1: every batch holds one request (mean $mb)" test "$mb" = 1.0
        else
            check "batch max $b: batches hold more than one request (mean $mb)" \
                awk -v m="$mb" 'BEGIN { exit !(m + 0 > 1.0) }'
        fi
    fi
done
echo "     run time $((SECONDS - t_start)) s"
echo "$fails failure(s)"
test "$fails" -eq 0
