#!/usr/bin/env bash
# primary_test.sh - primary failure on a real 4-node cluster: under continuous
# client load (`fedbft bench`), kill -9 the current primary; the live replicas
# move to a new view within the configured request timeout + view-change
# timeout (plus slack for a busy machine), the load carries on with no failed
# request, and the old primary, restarted, catches up.  Prints
#   figure: primary killed; commits stopped X ms; view 0 -> V; ...
# measured by polling a backup's last_executed every ~50 ms.
#   primary_test.sh PATH_TO_FEDBFT
# Environment:
#   FEDBFT_PRIMARY_LOAD_S    seconds of client load (default 20)
#   FEDBFT_PRIMARY_SLACK_MS  allowance on top of the two timeouts for a slow
#                            or shared machine (default 6000)
set -u
FEDBFT=${1:?usage: primary_test.sh PATH_TO_FEDBFT}
LOAD_S=${FEDBFT_PRIMARY_LOAD_S:-20}
SLACK_MS=${FEDBFT_PRIMARY_SLACK_MS:-6000}
tmp=$(mktemp -d /tmp/fedbft-primary-XXXXXX)
dir=$tmp/cluster
bench_pid=
poll_pid=
cleanup() {
    [ -n "$poll_pid" ] && kill "$poll_pid" 2>/dev/null
    [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
    "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 20 "$dir/node$i/node.log" 2>/dev/null; done
        echo "--- bench stderr (tail)"; tail -n 10 "$tmp/bench.err" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# This test's ports: 4000..4999 (replica P+i, client P+100+i, HTTP P+200+i).
if ! cluster_start 4000 0 --durability os --model none; then
    echo "FAIL cluster up"; cat "$dir.up.out" 2>/dev/null; fails=1; exit 1
fi
echo "ok   cluster up (base port $base)"

ctl() { # ctl I COMMAND [KEY=VALUE...]: node I's JSON reply
    local i=$1; shift
    "$FEDBFT" ctl --socket "$dir/node$i/data/admin.sock" --json --timeout 2000 "$@" 2>/dev/null
}
field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" | head -1; } # field NAME < JSON
executed() { ctl "$1" status | field last_executed; }
now_ms() { date +%s%3N; }

ctl 0 config > "$tmp/config"
req_ms=$(field request_timeout_ms < "$tmp/config")
vc_ms=$(field view_change_timeout_ms < "$tmp/config")
check "config shows request_timeout_ms ($req_ms) and view_change_timeout_ms ($vc_ms)" \
    test -n "$req_ms" -a -n "$vc_ms"
echo "     configured: request_timeout_ms=$req_ms view_change_timeout_ms=$vc_ms (slack ${SLACK_MS} ms)"
primary=$(ctl 0 status | field primary)
check "status names the primary (node ${primary:-?})" test -n "$primary"
primary=${primary:-0}
view0=$(ctl 0 status | field view)
backup=$(((primary + 2) % 4)) # a backup that is not the next view's primary
live=$(for i in 0 1 2 3; do [ "$i" -ne "$primary" ] && printf '%s ' "$i"; done)

# Continuous load from 4 clients, and a poller recording the backup's progress.
"$FEDBFT" bench --cluster "$dir/cluster.json" --keys "$dir/clients" --clients 4 --warmup 0 \
    --duration "$LOAD_S" --timeout 20000 --json > "$tmp/bench.json" 2> "$tmp/bench.err" &
bench_pid=$!
poll() { while :; do echo "$(now_ms) $(executed "$backup")"; sleep 0.05; done; }
poll > "$tmp/poll" &
poll_pid=$!
moving() { local a b; a=$(executed "$backup"); sleep 0.3; b=$(executed "$backup")
    [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt "$a" ]; }
wait_for "the load commits on backup $backup" 20 moving
sleep 2 # a few seconds of steady load before the kill

t_kill=$(now_ms)
"$FEDBFT" cluster kill "$primary" --dir "$dir" > /dev/null
check "kill -9 the primary (node $primary)" test $? -eq 0

new_view() { # every live node in a view above view0, not view-changing
    local i s v
    for i in $live; do
        s=$(ctl "$i" status)
        v=$(field view <<< "$s")
        [ -n "$v" ] && [ "$v" -gt "$view0" ] && [ "$(field view_changing <<< "$s")" = false ] || return 1
    done
}
wait_for "every live node reaches a new view" 60 new_view
t_view=$(now_ms)
vc_took=$((t_view - t_kill))
view1=$(ctl "$backup" status | field view)
limit=$((req_ms + vc_ms + SLACK_MS))
check "new view $view1 within request + view-change timeout + slack ($vc_took <= $limit ms)" \
    test "$vc_took" -le "$limit"
views=$(for i in $live; do ctl "$i" status | field view; done | sort -u)
check "the live nodes agree on the view ($(echo $views))" test "$(echo "$views" | wc -l)" -eq 1

# The load carries on in the new view.
e1=$(executed "$backup")
advanced() { local e; e=$(executed "$backup"); [ -n "$e" ] && [ "$e" -gt "${e1:-0}" ]; }
wait_for "backup $backup commits in the new view" 30 advanced

wait "$bench_pid"; rc=$?
bench_pid=
kill "$poll_pid" 2>/dev/null; wait "$poll_pid" 2>/dev/null; poll_pid=
check "bench exits 0 (rc $rc)" test "$rc" -eq 0
num() { sed -n "s/.*\"$1\": *\([0-9][0-9.]*\).*/\1/p" "$tmp/bench.json" | head -1; }
ops=$(num ops); errors=$(num errors); timeouts=$(num timeouts); retx=$(num retransmits)
unfinished=$(num unfinished)
check "the load completed requests (ops ${ops:-?})" test "${ops:-0}" -gt 0
check "no request failed (errors ${errors:-?}, timeouts ${timeouts:-?}, unfinished ${unfinished:-?})" \
    test "${errors:-1}" -eq 0 -a "${timeouts:-1}" -eq 0 -a "${unfinished:-1}" -eq 0

# A client process started after the view change does not know the view: its
# first write goes to every replica, not only to the dead old primary (which
# would cost it a retransmit period before anyone saw the request).  With the
# retransmit period longer than the timeout, the write commits only if the
# first send reached the live replicas.
fresh_start=$(date +%s%N)
"$FEDBFT" client --cluster "$dir/cluster.json" --key "$dir/clients/client0/node.key" \
    --timeout 5000 --retransmit 60000 put fresh/0 v > "$tmp/fresh.out" 2>&1
fresh_ms=$((($(date +%s%N) - fresh_start) / 1000000))
check "a new client process in the new view commits without a retransmit (${fresh_ms} ms: $(head -c 200 "$tmp/fresh.out"))" \
    grep -q "^OK" "$tmp/fresh.out"

# Restart the old primary once the cluster is quiet: it must rejoin the new
# view and catch up without new writes to carry it along.
target=$(executed "$backup")
"$FEDBFT" cluster restart "$primary" --dir "$dir" > "$tmp/restart" 2>&1
check "restart the old primary" test $? -eq 0
t_restart=$(now_ms)
caught_up() { # the old primary at the target seq, settled in the others' view
    local s e v; s=$(ctl "$primary" status); e=$(field last_executed <<< "$s"); v=$(field view <<< "$s")
    [ -n "$e" ] && [ "$e" -ge "${target:-0}" ] && [ "$(field view_changing <<< "$s")" = false ] &&
        [ -n "$v" ] && [ "$v" = "$(ctl "$backup" status | field view)" ]
}
wait_for "the restarted old primary catches up to seq $target, in the others' view" 30 caught_up &&
    rejoin="rejoined and caught up in $(($(now_ms) - t_restart)) ms" || rejoin="did not rejoin on its own"
ctl "$primary" status | sed 's/^/     old primary: /'
out=$("$FEDBFT" client --cluster "$dir/cluster.json" --key "$dir/clients/client5/node.key" --timeout 20000 put after-restart yes)
check "a write after the restart" test "${out%% *}" = OK
same_seq() { local s; s=$(for i in 0 1 2 3; do echo "$(executed "$i")"; done | sort -u)
    [ "$(grep -c '^[0-9][0-9]*$' <<< "$s")" -eq 1 ] && [ "$(wc -l <<< "$s")" -eq 1 ]; }
wait_for "all four nodes reach the same seq" 30 same_seq

# Time without commits: the longest pause between two increases of the
# backup's last_executed that ends after the kill.
stopped=$(awk -v k="$t_kill" '
    $2 ~ /^[0-9]+$/ { if (last != "" && $2 > seq) { if ($1 > k && $1 - last > gap) gap = $1 - last }
                      if (last == "" || $2 > seq) { last = $1; seq = $2 } }
    END { print gap + 0 }' "$tmp/poll")
check "commits resumed after the kill (pause $stopped ms)" test "$stopped" -gt 0
check "commits stopped for at most request + view-change timeout + slack ($stopped <= $limit ms)" \
    test "$stopped" -le "$limit"
echo "figure: primary killed; commits stopped $stopped ms; view $view0 -> $view1 in $vc_took ms;" \
     "request_timeout $req_ms ms, view_change_timeout $vc_ms ms; requests retried ${retx:-?}" \
     "(bench retransmits), timeouts ${timeouts:-?}; ops ${ops:-?} in ${LOAD_S} s; old primary $rejoin"

echo "$fails failure(s)"
test "$fails" -eq 0
