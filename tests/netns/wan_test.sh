#!/usr/bin/env bash
# wan_test.sh - a 4-node federation across network namespaces (one per node,
# one for the clients, a bridge between them) over an emulated WAN: every
# link 20 ms +- 5 ms one way with 1% loss (tc netem, or fb_netem where the
# kernel has no sch_netem; see lib.sh).  Under a steady client write load:
#   (1) writes commit and every node's executed seq grows;
#   (2) the primary (replica 0, view 0) cut off from the other nodes by
#       iptables DROP rules: the others change view, writes keep committing;
#   (3) healed: the old primary catches up, and once the load stops all four
#       reach the same executed seq, stable checkpoint digest and view, and
#       every acknowledged write is on every node (`fedbft inspect --check`).
# Prints `figure:` lines: writes/s before and during the cut, time to the
# new view, catch-up and convergence time after the heal.
#   wan_test.sh PATH_TO_FEDBFT [PATH_TO_FB_NETEM]
# Exits 77 (skip) without root, network namespaces or a link emulator.
# Environment:
#   FEDBFT_NETNS_LINKS  netem | fb_netem: force one link emulator
#   FEDBFT_WAN_STEADY_S seconds of load measured before the cut (default 5)
#   FEDBFT_WAN_VC_TIMEOUT_MS  view_change_timeout_ms in every node.json
#                       (default: the node's default, 2000)
#   FEDBFT_KEEP_TMP     keep the temporary directory of a failed run
set -u
FEDBFT=${1:?usage: wan_test.sh PATH_TO_FEDBFT [PATH_TO_FB_NETEM]}
STEADY_S=${FEDBFT_WAN_STEADY_S:-5}
tmp=$(mktemp -d /tmp/fedbft-netns-wan-XXXXXX)
dir=$tmp/cluster
acked=$tmp/acked
load_pid=
cleanup() {
    [ -n "$load_pid" ] && kill "$load_pid" 2> /dev/null && wait "$load_pid" 2> /dev/null
    netns_cleanup
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 15 "$dir/node$i/node.log" 2> /dev/null; done
        echo "--- load (tail)"; tail -n 5 "$tmp/load.out" 2> /dev/null
        for f in "$tmp"/fb_netem-*.log; do [ -f "$f" ] && echo "--- $(basename "$f"): $(tail -n 1 "$f")"; done
    fi
    if [ "${fails:-1}" -ne 0 ] && [ -n "${FEDBFT_KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
t_start=$SECONDS

netns_init "$FEDBFT" "${2:-}" || { echo "FAIL namespaces"; fails=1; exit 1; }
echo "ok   namespaces $netns_run-{sw,n0..n3,cl} on $NET.0/24"
netns_links 20 5 1 || { echo "FAIL link emulation"; fails=1; exit 1; }
netns_cluster_init --durability os --model none --clients 8 || { fails=1; exit 1; }
if [ -n "${FEDBFT_WAN_VC_TIMEOUT_MS:-}" ]; then
    set_node_knob view_change_timeout_ms "$FEDBFT_WAN_VC_TIMEOUT_MS" || { fails=1; exit 1; }
    echo "     view_change_timeout_ms $FEDBFT_WAN_VC_TIMEOUT_MS (FEDBFT_WAN_VC_TIMEOUT_MS)"
fi
netns_nodes_start || { fails=1; exit 1; }
echo "ok   4 nodes up, each in its own namespace (replica i on $NET.<i+1>:$NETNS_PORT)"

view_of() { node_ctl "$1" status | json_field view; }
in_view_above() { # in_view_above V NODE...: each NODE settled in a view > V
    local v=$1 i s w; shift
    for i in "$@"; do
        s=$(node_ctl "$i" status); w=$(json_field view <<< "$s")
        [ -n "$w" ] && [ "$w" -gt "$v" ] && [ "$(json_field view_changing <<< "$s")" = false ] || return 1
    done
}
all_grew() { # all_grew "E0 E1 ..." NODE...: each NODE executed beyond its entry
    local -a was; local i k=0
    read -r -a was <<< "$1"; shift
    for i in "$@"; do
        local e; e=$(node_executed "$i")
        [ -n "$e" ] && [ "$e" -gt "${was[$k]:-0}" ] || return 1
        k=$((k + 1))
    done
}
executed_list() { local i; for i in "$@"; do printf '%s ' "$(node_executed "$i")"; done; }
acked_above() { [ "$(acked_count)" -ge "$1" ]; }
converged() { # all four: same last_executed, same stable checkpoint (seq, digest), same view
    local e c v i
    e=$(for i in 0 1 2 3; do node_executed "$i"; done | sort -u)
    c=$(for i in 0 1 2 3; do node_checkpoint "$i"; done | sort -u)
    v=$(for i in 0 1 2 3; do view_of "$i"; done | sort -u)
    [ "$(grep -c '^[0-9][0-9]*$' <<< "$e")" -eq 1 ] && [ "$(wc -l <<< "$e")" -eq 1 ] &&
        [ "$(grep -c '^[0-9][0-9]* [0-9a-f]' <<< "$c")" -eq 1 ] && [ "$(wc -l <<< "$c")" -eq 1 ] &&
        [ "$(grep -c '^[0-9][0-9]*$' <<< "$v")" -eq 1 ] && [ "$(wc -l <<< "$v")" -eq 1 ]
}
show_state() {
    local i s
    for i in 0 1 2 3; do
        s=$(node_ctl "$i" status)
        echo "     node $i: view $(json_field view <<< "$s") changing $(json_field view_changing <<< "$s")" \
             "executed $(json_field last_executed <<< "$s") checkpoint $(node_checkpoint "$i" | cut -c1-30)"
    done
}
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.1f", (ms > 0 ? n * 1000 / ms : 0) }'; }

# ---- (1) steady load across the WAN
primary=$(node_ctl 0 status | json_field primary)
check "replica 0 is the primary of view 0 (primary ${primary:-?}, view $(view_of 0))" \
    test "${primary:-x}" = 0 -a "$(view_of 0)" = 0
ip netns exec "$(netns_ns cl)" "$FEDBFT" client --cluster "$dir/cluster.json" --keys "$dir/clients" load \
    --duration 600 --concurrency 8 --keep-going --acked "$acked" --prefix wan --timeout 30000 \
    > "$tmp/load.out" 2>&1 &
load_pid=$!
wait_for "the load's first writes commit from the client namespace" 30 acked_above 1
e_before=$(executed_list 0 1 2 3)
a0=$(acked_count); t0=$(now_ms)
while [ $(($(now_ms) - t0)) -lt $((STEADY_S * 1000)) ]; do sleep 0.2; done
a1=$(acked_count); t1=$(now_ms)
steady=$(rate $((a1 - a0)) $((t1 - t0)))
check "writes commit under 20+-5 ms and 1% loss ($((a1 - a0)) in $((t1 - t0)) ms, floor 20)" \
    test $((a1 - a0)) -ge 20
wait_for "the executed seq grows on every node (from $e_before)" 20 all_grew "$e_before" 0 1 2 3
echo "figure: netns WAN 20+-5 ms, 1% loss: $steady writes/s from 8 clients (executed $(executed_list 0 1 2 3))"

# ---- (2) the primary cut off from the other nodes
t_cut=$(now_ms)
ok=0; for i in 1 2 3; do netns_cut 0 "$i" || ok=1; done
check "cut node 0 (primary) from nodes 1-3 (iptables DROP both ways)" test $ok -eq 0
wait_for "nodes 1-3 settle in a view >= 1" 60 in_view_above 0 1 2 3 || show_state
t_view=$(now_ms)
vc_ms=$((t_view - t_cut))
v1=$(view_of 1)
a2=$(acked_count)
e_view=$(executed_list 1 2 3)
wait_for "writes keep committing in view $v1 (20 more acknowledged)" 30 acked_above $((a2 + 20))
wait_for "nodes 1-3 execute in view $v1 (from $e_view)" 20 all_grew "$e_view" 1 2 3
a3=$(acked_count); t3=$(now_ms)
cut_rate=$(rate $((a3 - a2)) $((t3 - t_view)))
e0=$(node_executed 0); e1=$(node_executed 1)
check "the cut-off old primary is behind (node 0 at ${e0:-?}, node 1 at ${e1:-?})" \
    test -n "$e0" -a -n "$e1" -a "${e0:-0}" -lt "${e1:-0}"
echo "figure: netns WAN primary cut: view 0 -> $v1 in $vc_ms ms; $cut_rate writes/s in the new view"

# ---- (3) heal: the old primary catches up; all four converge
target=$(node_executed 1)
t_heal=$(now_ms)
check "heal (remove every DROP rule)" netns_heal
caught_up() { # node 0 executed up to the others' seq at the heal, in their view
    local s e v
    s=$(node_ctl 0 status); e=$(json_field last_executed <<< "$s"); v=$(json_field view <<< "$s")
    [ -n "$e" ] && [ "$e" -ge "${target:-0}" ] && [ "$v" = "$(view_of 1)" ] &&
        [ "$(json_field view_changing <<< "$s")" = false ]
}
if ! wait_for "node 0 catches up to seq $target in the others' view, under load" 30 caught_up; then
    show_state
    v0=$(view_of 0)
    [ -n "$v0" ] && [ "$v0" -gt "$(view_of 1)" ] &&
        echo "     node 0 is alone in a view change to view $v0 while the others run view $(view_of 1)"
fi
catch_ms=$(($(now_ms) - t_heal))
kill "$load_pid" 2> /dev/null; wait "$load_pid"; load_rc=$?; load_pid=
t_stop=$(now_ms)
summary=$(grep '^writes=' "$tmp/load.out" | tail -1)
echo "     load: ${summary:-no summary line}"
failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<< "$summary")
check "the load ran to its stop (exit $load_rc) and no write failed (failed=${failed:-?})" \
    test "$load_rc" -eq 0 -a "${failed:-1}" -eq 0
wait_for "all four reach the same executed seq, checkpoint digest and view" 30 converged || show_state
conv_ms=$(($(now_ms) - t_stop))
show_state
out=$(netns_client "$FEDBFT" client --cluster "$dir/cluster.json" --key "$dir/clients/client0/node.key" \
    --timeout 30000 put after-heal yes 2>&1)
check "a write after the heal" test "${out%% *}" = OK
netns_nodes_stop
check_acked_on_every_node
echo "figure: netns WAN heal: node 0 caught up $catch_ms ms after the heal (under load);" \
     "all four converged $conv_ms ms after the load stopped; $(acked_count) writes acknowledged in all"

echo "     run time $((SECONDS - t_start)) s"
echo "$fails failure(s)"
test "$fails" -eq 0
