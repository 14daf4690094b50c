#!/usr/bin/env bash
# crash_test.sh - crashes under load on a real 4-node cluster (durability os).
# Four clients write continuously (`fedbft client load --keep-going --acked`:
# every write acknowledged by f+1 matching replies is recorded), while a
# random replica, the primary included, is killed with SIGKILL at a random
# moment and restarted after a random short delay, over and over.  At most
# f = 1 replica is down at once: the next kill waits until the restarted one
# has caught up with the others.  The request and view-change timeouts are
# cut to 1 s so that a killed primary is replaced quickly.  Afterwards:
#   - a few more writes take every node past a new stable checkpoint, where
#     all four report the same seq and the same state digest;
#   - no node saw an equivocating message from a peer (a restarted replica
#     must never send a PRE-PREPARE/PREPARE/COMMIT that conflicts with one it
#     sent before the crash): fedbft_messages_dropped_total{reason=
#     "equivocation"} is 0 everywhere;
#   - with the cluster stopped, every acknowledged write is on every node
#     with its value (`fedbft inspect --check`).
# Prints `figure:` lines: kills, acked and failed writes, retransmissions,
# the longest time without an acknowledged write, the test's duration.
#   crash_test.sh PATH_TO_FEDBFT
# Environment:
#   FEDBFT_CRASH_KILLS   kills (default 20)
#   FEDBFT_CRASH_SEED    seed of the random choices (default: random; printed,
#                        so a failing run's victims and delays can be replayed)
#   FEDBFT_KEEP_TMP=1    keep the cluster directory (logs, data) after a failure
set -u
FEDBFT=${1:?usage: crash_test.sh PATH_TO_FEDBFT}
KILLS=${FEDBFT_CRASH_KILLS:-20}
SEED=${FEDBFT_CRASH_SEED:-$((RANDOM * 32768 + RANDOM))}
tmp=$(mktemp -d /tmp/fedbft-crash-XXXXXX)
dir=$tmp/cluster
load_pid=
cleanup() {
    [ "${fails:-1}" -eq 0 ] || echo "seed: $SEED (FEDBFT_CRASH_SEED=$SEED replays the same choices)"
    load_cluster_cleanup 25
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
RANDOM=$SEED
t_start=$(now_ms)
echo "     seed $SEED, $KILLS kills"

# This test's ports: 2000..2999 (replica P+i, client P+100+i, HTTP P+200+i).
# The request and view-change timeouts are cut to 1 s (default 2 s).
short_timeouts() { set_node_knob request_timeout_ms 1000 && set_node_knob view_change_timeout_ms 1000; }
cluster_hook=short_timeouts
if ! cluster_start 2000 0 --durability os --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
check "cluster up (base port $base) with 1 s timeouts" grep -q '"request_timeout_ms": 1000' "$dir/node3/node.json"

cl=$dir/cluster.json
acked=$tmp/acked
prefix=crash$SEED
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --duration 3600 --concurrency 4 \
    --keep-going --timeout 5000 --prefix "$prefix" --acked "$acked" > "$tmp/load.out" 2>&1 &
load_pid=$!
has_acks() { [ "$(acked_count)" -gt "$1" ]; }
wait_for "the load gets writes acknowledged" 30 has_acks 0

# rand_sleep LO HI: sleep a random whole number of milliseconds in [LO, HI]
rand_sleep() { sleep "$(awk -v ms=$(($1 + RANDOM % ($2 - $1 + 1))) 'BEGIN{printf "%.3f", ms / 1000}')"; }
max_executed_but() { # the highest last_executed among the nodes other than $1
    local i e m=0
    for i in 0 1 2 3; do
        [ "$i" -eq "$1" ] && continue
        e=$(node_executed "$i"); [ -n "$e" ] && [ "$e" -gt "$m" ] && m=$e
    done
    echo "$m"
}
caught_up() { local e; e=$(node_executed "$1"); [ -n "$e" ] && [ "$e" -ge "$2" ]; }
node_alive() { local pid; pid=$(node_pid "$1") && kill -0 "$pid" 2>/dev/null; }
wait_caught_up() { # wait_caught_up K I TARGET: like wait_for, failing at once if node I exits
    local what="kill $1: node $2 restarted and caught up to seq $3" deadline=$((SECONDS + 60))
    until caught_up "$2" "$3"; do
        if ! node_alive "$2"; then
            echo "FAIL $what: node $2 exited; its log ends:"; tail -n 3 "$dir/node$2/node.log" | sed 's/^/     /'
            fails=$((fails + 1)); return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "FAIL $what (after 60s; at seq $(node_executed "$2"))"; fails=$((fails + 1)); return 1
        fi
        sleep 0.2
    done
    echo "ok   $what"
}
load_alive() { kill -0 "$load_pid" 2>/dev/null; }

kills=0 primary_kills=0 victims=
for ((k = 1; k <= KILLS; k++)); do
    rand_sleep 100 1000
    victim=$((RANDOM % 4))
    primary=$(node_ctl "$(((victim + 1) % 4))" status | json_field primary)
    "$FEDBFT" cluster kill "$victim" --dir "$dir" > /dev/null || { echo "FAIL kill $k: node $victim"; fails=$((fails + 1)); break; }
    kills=$((kills + 1))
    if [ "$victim" = "$primary" ]; then
        primary_kills=$((primary_kills + 1)); victims="$victims ${victim}p"
    else
        victims="$victims $victim"
    fi
    rand_sleep 100 600
    if ! "$FEDBFT" cluster restart "$victim" --dir "$dir" > "$tmp/restart.out" 2>&1; then
        echo "FAIL kill $k: node $victim does not restart"; cat "$tmp/restart.out"; fails=$((fails + 1)); break
    fi
    # The next kill waits for this node to catch up, so no more than one
    # replica is ever behind (f = 1).
    target=$(max_executed_but "$victim")
    wait_caught_up "$k" "$victim" "$target" || break
    if ! load_alive; then echo "FAIL the load stopped"; fails=$((fails + 1)); break; fi
done
check "$KILLS kills done ($primary_kills of the primary)" test "$kills" -eq "$KILLS"
echo "     victims (p = the primary):$victims"
before=$(acked_count)
wait_for "the load gets writes acknowledged after the last restart" 30 has_acks "$before"

kill -TERM "$load_pid"
wait "$load_pid"
check "the load ends cleanly" test $? -eq 0
load_pid=
totals=$(grep '^writes=' "$tmp/load.out" | tail -n 1)
echo "     load: $totals"
load_figure() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<< " $totals"; }
acks=$(acked_count)
check "acknowledged writes recorded ($acks)" test "$acks" -gt 0 -a "$acks" = "$(load_figure writes)"

# A few more writes, so that every node passes a new stable checkpoint.
stable_max() { local i s m=0; for i in 0 1 2 3; do
    s=$(node_checkpoint "$i"); s=${s%% *}; [ -n "$s" ] && [ "$s" -gt "$m" ] && m=$s; done; echo "$m"; }
s0=$(stable_max)
"$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes 48 --concurrency 1 \
    --timeout 20000 --prefix "$prefix-after" --acked "$acked" > "$tmp/after.out" 2>&1
check "48 writes after the crashes committed" grep -q "writes=48 failed=0" "$tmp/after.out"
# A node that knows of a stable checkpoint it has not reached yet (it is
# fetching the state) reports the certified checkpoint too, so the nodes must
# also agree on the last executed seq, at or past that checkpoint.
same_new_checkpoint() { # all four executed the same seq, at one stable checkpoint past s0
    local i c e first e0
    first=$(node_checkpoint 0); e0=$(node_executed 0)
    [ -n "$first" ] && [ -n "$e0" ] && [ "${first%% *}" -gt "$s0" ] && [ "$e0" -ge "${first%% *}" ] ||
        return 1
    for i in 1 2 3; do
        c=$(node_checkpoint "$i"); e=$(node_executed "$i")
        [ "$c" = "$first" ] && [ "$e" = "$e0" ] || return 1
    done
}
wait_for "all four nodes execute to the same seq and pass a new stable checkpoint (after seq $s0) with the same state digest" \
    60 same_new_checkpoint
for i in 0 1 2 3; do echo "     node $i executed $(node_executed "$i"), stable checkpoint $(node_checkpoint "$i")"; done

equiv='fedbft_messages_dropped_total{reason="equivocation"}'
for i in 0 1 2 3; do
    v=$(node_metric "$i" "$equiv")
    if [ -z "$v" ]; then
        echo "FAIL node $i does not export $equiv (a build without the per-reason counters?)"
        fails=$((fails + 1))
    else
        check "node $i: no equivocating message seen ($equiv = $v)" test "${v%.*}" -eq 0
    fi
done

# Stop everything; every acknowledged write must be on every node.
"$FEDBFT" cluster down --dir "$dir" > /dev/null
check_acked_on_every_node

t_end=$(now_ms)
echo "figure: crash kills $kills (primary $primary_kills) acked_writes $acks failed_writes $(load_figure failed) timeouts $(load_figure timeouts) retransmits $(load_figure retransmits)"
echo "figure: crash max time without an acknowledged write $(load_figure max_ack_gap_ms) ms; load $(load_figure seconds) s at $(load_figure writes_per_sec) writes/s"
echo "figure: crash test took $(((t_end - t_start) / 1000)) s"
echo "$fails failure(s)"
test "$fails" -eq 0
