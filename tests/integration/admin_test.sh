#!/usr/bin/env bash
# admin_test.sh - the admin socket of a real 4-node cluster: mode 0600, help,
# status fields, errors that leave the connection usable (unknown command, bad
# JSON, a line over 65536 bytes), `cluster status` consensus columns, and the
# operator commands (peers, config, log-level, checkpoint, view-change, fault,
# shutdown).  Commands a node does not list in `help` are skipped with a note;
# raw-line checks need socat and are skipped without it.
#   admin_test.sh PATH_TO_FEDBFT
set -u
FEDBFT=${1:?usage: admin_test.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-admin-XXXXXX)
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

base=$((10000 + (RANDOM % 1000) * 20))
"$FEDBFT" cluster init --nodes 4 --dir "$dir" --base-port "$base" --durability os >/dev/null
check "cluster init" test -f "$dir/cluster.json"
check "init enables fault injection (a test cluster)" grep -q '"fault_injection": *true' "$dir/node0/node.json"
check "init gives node 2 HTTP port P+202" grep -q "\"http_port\": *$((base + 202))" "$dir/node2/node.json"
if ! "$FEDBFT" cluster up --dir "$dir" > "$tmp/up.out" 2>&1; then
    echo "FAIL cluster up"; cat "$tmp/up.out"; fails=1; exit 1
fi
echo "ok   cluster up"

sock() { echo "$dir/node$1/data/admin.sock"; }
ctl() { # ctl I COMMAND [KEY=VALUE...]: the JSON reply of node I on stdout
    local i=$1; shift
    "$FEDBFT" ctl --socket "$(sock "$i")" --json --timeout 5000 "$@"
}
field() { # field NAME < JSON: the first number (or true/false) value of NAME
    sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" | head -1
}
executed() { ctl "$1" status 2>/dev/null | field last_executed; }
is_error() { grep -q '"error":'; }
cl=$dir/cluster.json
C() { "$FEDBFT" client --cluster "$cl" --key "$dir/clients/client0/node.key" --timeout 20000 "$@"; }

# --- the socket file and the basic commands
mode=$(stat -c %a "$(sock 0)" 2>/dev/null)
check "admin socket is mode 0600 (is $mode)" test "$mode" = 600
check "admin socket is a socket" test -S "$(sock 0)"
ctl 0 help > "$tmp/help" 2>&1
check "help exits 0" test $? -eq 0
check "help lists help and status" grep -q '"help":.*"status":\|"status":.*"help":' "$tmp/help"
has() { grep -q "\"$1\":" "$tmp/help"; }
ctl 0 status > "$tmp/status" 2>&1
check "status exits 0" test $? -eq 0
for f in id n f view primary last_executed last_committed stable_checkpoint; do
    check "status has $f" grep -q "\"$f\":" "$tmp/status"
done
out=$("$FEDBFT" ctl --socket "$(sock 0)" status 2>&1)
check "status as text" grep -q "last_executed" <<< "$out"

# --- errors
ctl 0 no-such-command > "$tmp/unk" 2>&1; rc=$?
check "unknown command exits 1" test $rc -eq 1
check "unknown command is a JSON error naming it" grep -q '"error":.*no-such-command' "$tmp/unk"
pad=$(head -c 70000 /dev/zero | tr '\0' a)
ctl 0 status pad="$pad" > "$tmp/big" 2>&1; rc=$?
check "a line over 65536 bytes exits 1" test $rc -eq 1
check "a line over 65536 bytes is an error" grep -q '"error":.*too long' "$tmp/big"
out=$(ctl 0 status 2>&1)
check "socket usable after an oversized line" grep -q '"last_executed":' <<< "$out"

if command -v socat > /dev/null 2>&1; then
    raw() { timeout 10 socat -t 3 - "UNIX-CONNECT:$(sock 0)"; }
    printf '{"command":"nope"}\n{"command":"status"}\n' | raw > "$tmp/raw1" 2>&1
    check "raw: unknown command gets an error" sed -n 1p "$tmp/raw1" | is_error
    check "raw: the next command on the connection works" grep -q '"last_executed":' <(sed -n 2p "$tmp/raw1")
    printf '{"command": "status",,}\n["status"]\n{"nocommand":1}\n{"command":"status"}\n' | raw > "$tmp/raw2" 2>&1
    check "raw: bad JSON gets an error" sed -n 1p "$tmp/raw2" | is_error
    check "raw: a JSON non-object gets an error" sed -n 2p "$tmp/raw2" | is_error
    check "raw: a request without command gets an error" sed -n 3p "$tmp/raw2" | is_error
    check "raw: status after three errors works" grep -q '"last_executed":' <(sed -n 4p "$tmp/raw2")
    { head -c 70000 /dev/zero | tr '\0' a; printf '\n{"command":"status"}\n'; } | raw > "$tmp/raw3" 2>&1
    check "raw: oversized line gets an error" grep -q '"error":.*too long' <(sed -n 1p "$tmp/raw3")
    check "raw: same connection usable after it" grep -q '"last_executed":' <(sed -n 2p "$tmp/raw3")
    check "raw: exactly one reply per line" test "$(wc -l < "$tmp/raw3")" -eq 2
else
    skip "raw socket checks (bad JSON, errors on one connection): socat is not installed"
fi

# --- cluster status shows consensus columns
out=$(C put alpha one); check "put" test "${out%% *}" = OK
"$FEDBFT" cluster status --dir "$dir" > "$tmp/cstatus" 2>&1
check "cluster status has a view/executed/stable column" grep -q "view/executed/stable" "$tmp/cstatus"
check "cluster status shows each node's view/executed/stable" \
    test "$(grep -cE ' running .* [0-9]+/[0-9]+/[0-9]+$' "$tmp/cstatus")" -eq 4
sed 's/^/     /' "$tmp/cstatus"

# --- HTTP: /health, /ready, and /metrics as valid Prometheus text (bash /dev/tcp, no curl needed)
http_get() { # http_get PORT PATH -> full response on stdout
    exec 5<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&5
    cat <&5
    exec 5<&-
}
hp=$((base + 200))
http_get "$hp" /health > "$tmp/health" 2>/dev/null
check "GET /health is 200" grep -q "^HTTP/1.1 200" "$tmp/health"
ready_ok() { http_get "$hp" /ready 2>/dev/null | grep -q "^HTTP/1.1 200"; }
wait_for "GET /ready turns 200 once the node is connected and caught up" 30 ready_ok
http_get "$hp" /nope > "$tmp/nope" 2>/dev/null
check "an unknown path is 404" grep -q "^HTTP/1.1 404" "$tmp/nope"
http_get "$hp" /metrics | tr -d '\r' | sed '1,/^$/d' > "$tmp/metrics" 2>/dev/null
# every line a comment or "name{labels} value"; TYPE before the samples of a name
bad=$(awk '
    /^# (HELP|TYPE) / { if ($2 == "TYPE") typed[$3] = 1; next }
    /^$/ { next }
    {
        name = $1; sub(/\{.*/, "", name); base = name
        sub(/_(bucket|sum|count)$/, "", base)
        if (name !~ /^[a-zA-Z_:][a-zA-Z0-9_:]*$/) { print "bad name: " $0; next }
        if (!(name in typed) && !(base in typed)) { print "no TYPE: " $0; next }
        if ($NF !~ /^(-?[0-9.]+([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$/) print "bad value: " $0
    }' "$tmp/metrics")
check "/metrics is valid Prometheus text" test -z "$bad"
[ -n "$bad" ] && echo "$bad" | head -5
for m in fedbft_requests_total fedbft_commit_latency_seconds_bucket fedbft_request_phase_seconds_count \
         fedbft_batch_size_bucket fedbft_verify_batch_size_count fedbft_store_commit_seconds_sum \
         fedbft_digest_computations_total fedbft_sigcache_hits_total fedbft_frames_rejected_total \
         fedbft_view_changes_total fedbft_store_queue_depth fedbft_verify_queue_depth; do
    check "/metrics has $m" grep -q "^$m" "$tmp/metrics"
done
check "/metrics counts the committed request" grep -qE "^fedbft_requests_total [1-9]" "$tmp/metrics"

# --- recent-ops, metrics (JSON), cache/batcher, peers' round-trip time
ctl 0 recent-ops > "$tmp/ops" 2>&1
check "recent-ops lists recent requests" grep -q '"recent":\[{' "$tmp/ops"
check "recent-ops has the time per phase" grep -q '"phase_ms":{' "$tmp/ops"
check "recent-ops has the slowest requests" grep -q '"slowest":\[' "$tmp/ops"
ctl 0 metrics > "$tmp/mjson" 2>&1
check "metrics as JSON counts requests" grep -qE '"fedbft_requests_total": *[1-9]' "$tmp/mjson"
check "metrics as JSON has histograms" grep -q '"fedbft_commit_latency_seconds":{"count"' "$tmp/mjson"
ctl 0 cache > "$tmp/cache" 2>&1; rc=$?
check "cache answers with its stats (init gives the nodes a model)" test $rc -eq 0
check "cache shows entries and hits" grep -q '"hits"' "$tmp/cache"
ctl 0 batcher > "$tmp/batcher" 2>&1; rc=$?
check "batcher answers with queue and slots" grep -q '"queue_depth"' "$tmp/batcher"
ctl 0 peers > "$tmp/peers-rtt" 2>&1
check "peers reports a measured round-trip time" grep -qE '"rtt_ms":[0-9.]+' "$tmp/peers-rtt"

# --- operator commands, each only once the node lists it
if has peers; then
    ctl 0 peers > "$tmp/peers" 2>&1
    check "peers exits 0 with no error" test $? -eq 0
    check "peers reports connections" grep -q '"connected":' "$tmp/peers"
else
    skip "peers: not in this node's help yet"
fi
if has config; then
    ctl 0 config > "$tmp/config" 2>&1
    check "config exits 0" test $? -eq 0
    check "config shows checkpoint_interval" grep -q '"checkpoint_interval":' "$tmp/config"
    check "config holds no secret key" sh -c "! grep -qi 'secret\|seed' '$tmp/config'"
else
    skip "config: not in this node's help yet"
fi
if has log-level; then
    ctl 0 log-level level=debug > "$tmp/ll" 2>&1
    check "log-level level=debug exits 0" test $? -eq 0
    check "log-level reads back debug" grep -q '"debug"' <(ctl 0 log-level 2>&1)
    ctl 0 log-level level=loud > "$tmp/ll2" 2>&1; rc=$?
    check "log-level refuses an unknown level" test $rc -ne 0
    check "log-level error is JSON" is_error < "$tmp/ll2"
    ctl 0 log-level level=info > /dev/null 2>&1
else
    skip "log-level: not in this node's help yet"
fi
if has checkpoint; then
    ctl 0 checkpoint > "$tmp/ckpt" 2>&1
    check "checkpoint exits 0" test $? -eq 0
    check "checkpoint reports a seq" grep -q '"seq":' "$tmp/ckpt"
else
    skip "checkpoint: not in this node's help yet"
fi

# --- fault injection: partition node 3, keep committing, heal, catch up
same_seq() { local a b c d; a=$(executed 0); b=$(executed 1); c=$(executed 2); d=$(executed 3)
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$c" = "$d" ]; }
if has fault; then
    wait_for "all four nodes at the same seq before the partition" 30 same_seq
    ctl 3 fault peer=all drop=both > "$tmp/fault" 2>&1
    check "fault peer=all drop=both on node 3" test $? -eq 0
    check "fault reply is not an error" sh -c "! grep -q '\"error\":' '$tmp/fault'"
    e3=$(executed 3); e0=$(executed 0)
    "$FEDBFT" client --cluster "$cl" --keys "$dir/clients" load --writes 40 --concurrency 4 --timeout 20000 > "$tmp/load.out" 2>&1
    check "40 writes commit with node 3 partitioned" grep -q "writes=40 failed=0" "$tmp/load.out"
    n0=$(executed 0); n3=$(executed 3)
    check "the other nodes advanced ($e0 -> $n0)" test "${n0:-0}" -gt "${e0:-0}"
    check "partitioned node 3 did not advance ($e3 -> $n3)" test "${n3:-x}" = "$e3"
    if ctl 3 peers > "$tmp/peers3" 2>&1 && grep -q '"fault_dropped_' "$tmp/peers3"; then
        check "node 3 counts frames dropped by the fault" grep -q '"fault_dropped_\(in\|out\)":[1-9]' "$tmp/peers3"
    fi
    # `fault clear` (fedbft ctl passes it as clear=true); else drop=none undoes it.
    ctl 3 fault clear=true > "$tmp/clear" 2>&1 ||
        ctl 3 fault peer=all drop=none delay_ms=0 > "$tmp/clear" 2>&1
    check "fault clear on node 3" test $? -eq 0
    target=$(executed 0)
    caught_up() { local e; C put "heal-$SECONDS" x > /dev/null 2>&1; e=$(executed 3); [ -n "$e" ] && [ "$e" -ge "$target" ]; }
    wait_for "node 3 catches up to seq $target after the fault is cleared" 60 caught_up

    ctl 3 fault peer=9 drop=both > "$tmp/fault-bad" 2>&1; rc=$?
    check "fault refuses an unknown peer" test $rc -ne 0
    ctl 3 fault peer=all drop=sideways > "$tmp/fault-bad2" 2>&1; rc=$?
    check "fault refuses an unknown drop mode" test $rc -ne 0

    # A node whose node.json says fault_injection false refuses `fault`.
    sed -i 's/"fault_injection": *true/"fault_injection": false/' "$dir/node2/node.json"
    check "node 2 configured without fault injection" grep -q '"fault_injection": *false' "$dir/node2/node.json"
    "$FEDBFT" cluster restart 2 --dir "$dir" > "$tmp/restart" 2>&1
    check "node 2 restarted" test $? -eq 0
    ctl 2 fault peer=all drop=both > "$tmp/refused" 2>&1; rc=$?
    check "fault refused when fault_injection is false" test $rc -ne 0
    check "the refusal is a JSON error" is_error < "$tmp/refused"
    out=$(C put after-refused yes); check "cluster still commits" test "${out%% *}" = OK
else
    skip "fault (partition, heal, catch-up, refusal without fault_injection): not in this node's help yet"
fi

# --- view-change after the fault test, so a stray vote cannot mix with the partition
if has view-change; then
    ctl 2 view-change > "$tmp/vc" 2>&1
    check "view-change vote accepted" test $? -eq 0
    # One vote (< f+1) must not stop the cluster.
    out=$(C put after-vote yes); check "cluster commits after a single view-change vote" test "${out%% *}" = OK
else
    skip "view-change: not in this node's help yet"
fi

# --- shutdown: the node exits cleanly and its socket goes away
if has shutdown; then
    ctl 1 shutdown > "$tmp/shut" 2>&1
    check "shutdown accepted" test $? -eq 0
    stopped() { ! "$FEDBFT" ctl --socket "$(sock 1)" --timeout 500 status > /dev/null 2>&1 &&
        "$FEDBFT" cluster status --dir "$dir" 2>/dev/null | grep -qE '^1 +- +stopped'; }
    wait_for "node 1 stops after shutdown" 30 stopped
    check "node 1 shows '-' for consensus when down" \
        grep -qE '^1 .* -$' <("$FEDBFT" cluster status --dir "$dir" 2>/dev/null)
    out=$(C put after-shutdown yes); check "cluster commits with node 1 shut down" test "${out%% *}" = OK
else
    skip "shutdown: not in this node's help yet"
fi

echo "$fails failure(s), $skips skipped"
test "$fails" -eq 0
