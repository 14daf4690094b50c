#!/usr/bin/env bash
# partition_test.sh - network partitions on a real 4-node cluster, made with
# the admin `fault` command (it drops replica frames per peer, so each cut is
# applied on both sides):
#   (a) one backup isolated: the other three keep committing; healed, it
#       catches up (same last_executed and stable checkpoint digest);
#   (b) the primary isolated: the others change view and commit in the new
#       view; healed, all four converge;
#   (c) a 2-2 split: no quorum, so nothing commits anywhere and no node
#       diverges; healed, writes commit again and all four converge.
# Prints one `figure:` line per phase (time to view change, time to recover
# after the heal).
#   partition_test.sh PATH_TO_FEDBFT
# Environment:
#   FEDBFT_SPLIT_S  seconds the 2-2 split is held and watched (default 5)
set -u
FEDBFT=${1:?usage: partition_test.sh PATH_TO_FEDBFT}
SPLIT_S=${FEDBFT_SPLIT_S:-5}
tmp=$(mktemp -d /tmp/fedbft-partition-XXXXXX)
dir=$tmp/cluster
cleanup() {
    "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 20 "$dir/node$i/node.log" 2>/dev/null; done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# This test's ports: 5000..5999 (replica P+i, client P+100+i, HTTP P+200+i).
if ! cluster_start 5000 0 --durability os --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
echo "ok   cluster up (base port $base)"

cl=$dir/cluster.json
ctl() { # ctl I COMMAND [KEY=VALUE...]: node I's JSON reply
    local i=$1; shift
    "$FEDBFT" ctl --socket "$dir/node$i/data/admin.sock" --json --timeout 2000 "$@" 2>/dev/null
}
field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" | head -1; } # field NAME < JSON
executed() { ctl "$1" status | field last_executed; }
view_of() { ctl "$1" status | field view; }
now_ms() { date +%s%3N; }
C() { "$FEDBFT" client --cluster "$cl" --key "$dir/clients/client0/node.key" "$@"; }
load() { # load N: N writes from 4 clients; true if all committed
    "$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes "$1" --concurrency 4 \
        --timeout 30000 > "$tmp/load.out" 2>&1
    grep -q "writes=$1 failed=0" "$tmp/load.out"
}
sever() { # sever A B: drop every replica frame between nodes A and B, both ways
    ctl "$1" fault peer="$2" drop=both > /dev/null && ctl "$2" fault peer="$1" drop=both > /dev/null
}
heal() { local i rc=0; for i in 0 1 2 3; do ctl "$i" fault clear=true > /dev/null || rc=1; done; return $rc; }
ckpt() { # ckpt I: "seq digest" of node I's stable checkpoint
    ctl "$1" checkpoint | sed -n 's/.*"seq":\([0-9]*\).*"state_digest":"\([0-9a-f]*\)".*/\1 \2/p'
}
converged() { # all four nodes: same last_executed and same stable checkpoint (seq, digest)
    local e c
    e=$(for i in 0 1 2 3; do echo "$(executed "$i")"; done | sort -u)
    c=$(for i in 0 1 2 3; do echo "$(ckpt "$i")"; done | sort -u)
    [ "$(grep -c '^[0-9][0-9]*$' <<< "$e")" -eq 1 ] && [ "$(wc -l <<< "$e")" -eq 1 ] &&
        [ "$(grep -c '^[0-9][0-9]* ' <<< "$c")" -eq 1 ] && [ "$(wc -l <<< "$c")" -eq 1 ]
}
show_state() { # one line per node: view, executed, stable checkpoint (for a failure)
    local i s
    for i in 0 1 2 3; do
        s=$(ctl "$i" status)
        echo "     node $i: view $(field view <<< "$s") changing $(field view_changing <<< "$s")" \
             "executed $(field last_executed <<< "$s") checkpoint $(ckpt "$i" | cut -c1-30)"
    done
}
in_view_above() { # in_view_above V NODE...: each NODE settled in a view > V
    local v=$1 i s w; shift
    for i in "$@"; do
        s=$(ctl "$i" status); w=$(field view <<< "$s")
        [ -n "$w" ] && [ "$w" -gt "$v" ] && [ "$(field view_changing <<< "$s")" = false ] || return 1
    done
}
primary_of() { ctl "$1" status | field primary; }

check "writes before any fault" load 40
wait_for "all four nodes converge before the faults" 30 converged || show_state

# --- (a) one backup isolated
p=$(primary_of 0)
b=$(((p + 3) % 4))
others=$(for i in 0 1 2 3; do [ "$i" -ne "$b" ] && printf '%s ' "$i"; done)
ok=0; for i in $others; do sever "$b" "$i" || ok=1; done
check "isolate backup $b (fault on both sides of each link)" test $ok -eq 0
eb=$(executed "$b"); e0=$(executed "$p")
check "200 writes commit with backup $b isolated" load 200
n0=$(executed "$p"); nb=$(executed "$b")
check "the connected nodes advanced ($e0 -> $n0)" test "${n0:-0}" -gt "${e0:-0}"
check "isolated backup $b did not advance ($eb -> $nb)" test "${nb:-x}" = "$eb"
t_heal=$(now_ms)
check "heal" heal
wait_for "backup $b catches up: all four at the same seq and checkpoint digest" 60 converged || show_state
recover_a=$(($(now_ms) - t_heal))
cb=$(ckpt "$b")
check "backup $b holds the others' stable checkpoint past the cut (${cb:0:24}...)" test "${cb%% *}" -gt "$eb"
echo "     $(for i in 0 1 2 3; do printf 'node%s %s/%s  ' "$i" "$(executed "$i")" "$(ckpt "$i" | cut -c1-20)"; done)"
echo "figure: partition (a) backup $b isolated: $((n0 - e0)) seqs committed without it; caught up ${recover_a} ms after the heal"

# --- (b) the primary isolated
p=$(primary_of 0)
v0=$(view_of 0)
others=$(for i in 0 1 2 3; do [ "$i" -ne "$p" ] && printf '%s ' "$i"; done)
t_cut=$(now_ms)
ok=0; for i in $others; do sever "$p" "$i" || ok=1; done
check "isolate the primary (node $p, view $v0)" test $ok -eq 0
ep=$(executed "$p")
# A write: the client tries the primary, then every replica; the backups'
# request timers run out and they elect a new primary.
out=$(C --timeout 60000 put during-primary-cut yes 2>&1)
check "a write commits with the primary isolated" test "${out%% *}" = OK
# shellcheck disable=SC2086
wait_for "the other three settle in a view above $v0" 60 in_view_above "$v0" $others
vc_ms=$(($(now_ms) - t_cut))
v1=$(view_of "$(echo $others | cut -d' ' -f1)")
check "20 more writes commit in view $v1" load 20
check "the isolated primary executed nothing meanwhile ($ep -> $(executed "$p"))" test "$(executed "$p")" = "$ep"
t_heal=$(now_ms)
check "heal" heal
wait_for "all four converge (old primary $p included)" 60 converged || show_state
recover_b=$(($(now_ms) - t_heal))
views=$(for i in 0 1 2 3; do view_of "$i"; done | sort -u)
check "all four in the same view ($(echo $views))" test "$(grep -c . <<< "$views")" -eq 1
out=$(C --timeout 30000 put after-primary-heal yes 2>&1)
check "a write after the heal" test "${out%% *}" = OK
echo "figure: partition (b) primary $p isolated: view $v0 -> $v1 in ${vc_ms} ms (write committed); all four converged ${recover_b} ms after the heal"

# --- (c) 2-2 split: no quorum on either side
wait_for "converged before the split" 30 converged || show_state
ok=0; for a in 0 1; do for c in 2 3; do sever "$a" "$c" || ok=1; done; done
check "split {0,1} | {2,3}" test $ok -eq 0
before=$(for i in 0 1 2 3; do printf '%s ' "$(executed "$i")"; done)
t_split=$(now_ms)
C --timeout $((SPLIT_S * 1000)) put during-split x > "$tmp/split.out" 2>&1; rc=$?
check "a write during the split does not commit (client exit $rc)" test $rc -ne 0
while [ $(($(now_ms) - t_split)) -lt $((SPLIT_S * 1000)) ]; do sleep 0.2; done
after=$(for i in 0 1 2 3; do printf '%s ' "$(executed "$i")"; done)
check "no node executed anything during the split ($before-> $after)" test "$before" = "$after"
# No divergence: nodes at the same seq hold the same stable checkpoint.
div=$(for i in 0 1 2 3; do echo "$(executed "$i") $(ckpt "$i")"; done | sort -u |
    awk '{ if ($1 in d && d[$1] != $2 " " $3) print "seq " $1 ": " d[$1] " vs " $2 " " $3; d[$1] = $2 " " $3 }')
check "no divergence: equal last_executed means equal checkpoint digest" test -z "$div"
[ -n "$div" ] && echo "$div"
vmax=$(for i in 0 1 2 3; do view_of "$i"; done | sort -n | tail -1)
t_heal=$(now_ms)
check "heal" heal
out=$(C --timeout 60000 put after-split yes 2>&1)
check "a write commits after the heal" test "${out%% *}" = OK
t_write=$(now_ms)
check "20 more writes commit after the heal" load 20
wait_for "all four converge after the split" 60 converged || show_state
recover_c=$(($(now_ms) - t_heal))
views=$(for i in 0 1 2 3; do view_of "$i"; done | sort -u)
echo "figure: partition (c) 2-2 split for ${SPLIT_S} s: no commits (views reached up to $vmax);" \
     "first write committed $((t_write - t_heal)) ms after the heal, all four converged in ${recover_c} ms (view $(echo $views))"

echo "$fails failure(s)"
test "$fails" -eq 0
