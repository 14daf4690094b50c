# lib.sh - helpers the integration scripts share (source it; sets fails=0).
#   check DESCRIPTION COMMAND...          run COMMAND, print ok/FAIL, count failures
#   wait_for DESCRIPTION SECONDS COMMAND... poll COMMAND until it succeeds or the deadline passes
#   skip DESCRIPTION                       report a check that cannot run here
fails=0
skips=0
check() {
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}
wait_for() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then echo "FAIL $what (after ${secs}s)"; fails=$((fails + 1)); return 1; fi
        sleep 0.2
    done
    echo "ok   $what"
}
skip() { echo "skip $1"; skips=$((skips + 1)); }

# ---- helpers for scripts that drive a `fedbft cluster` directory; they use
# the caller's $FEDBFT (the binary) and $dir (the cluster directory).
#   node_ctl I CMD [K=V...]     node I's admin reply as JSON (empty if it does not answer)
#   json_field NAME             a number/word field from the JSON on stdin
#   node_executed I             node I's last executed seq
#   node_checkpoint I           "SEQ DIGEST" of node I's stable checkpoint
#   node_metric I 'NAME{LABELS}' a metric's value from node I (empty if not exported)
#   node_pid I                  the pid in node<I>/node.pid
#   node_rss_kib I              node I's resident set size (VmRSS) in KiB
#   set_node_knob NAME VALUE    set a numeric field in every node<i>/node.json
#   now_ms                      wall-clock milliseconds
#   fedbft_sanitized            true if $FEDBFT is an AddressSanitizer build
node_ctl() {
    local i=$1; shift
    "$FEDBFT" ctl --socket "$dir/node$i/data/admin.sock" --json --timeout 2000 "$@" 2>/dev/null
}
json_field() { sed -n "s/.*\"$1\":\([0-9a-z]*\).*/\1/p" | head -1; }
node_executed() { node_ctl "$1" status | json_field last_executed; }
node_checkpoint() {
    node_ctl "$1" checkpoint | sed -n 's/.*"seq":\([0-9]*\).*"state_digest":"\([0-9a-f]*\)".*/\1 \2/p'
}
node_metric() { # the JSON key is the Prometheus name with its quotes escaped
    local key=${2//\"/\\\\\"}
    node_ctl "$1" metrics | grep -o "\"$key\":[0-9.e+-]*" | head -1 | sed 's/.*"://'
}
node_pid() { cat "$dir/node$1/node.pid" 2>/dev/null; }
node_rss_kib() {
    local pid; pid=$(node_pid "$1") || return 1
    awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null
}
set_node_knob() {
    local f
    for f in "$dir"/node*/node.json; do
        sed -i "s/\"$1\": *[0-9]*/\"$1\": $2/" "$f" || return 1
    done
}
now_ms() { date +%s%3N; }
fedbft_sanitized() {
    [ -n "${FEDBFT_SANITIZED:-}" ] || ldd "$FEDBFT" 2>/dev/null | grep -q 'libasan' ||
        grep -q '__asan_init' "$FEDBFT" 2>/dev/null
}
# cluster_start START OFFSET INIT_ARGS...: make and start a 4-node cluster in
# $dir at base port START + k*300 + OFFSET (k = 0, 1, 2, a random one first,
# the next when another process holds a port of that base); runs the function
# named by $cluster_hook, if set, after each init (to edit node.json).  Sets
# $base; the output of the last `cluster up` is in $dir.up.out.
cluster_start() {
    local start=$1 offset=$2 j r=$((RANDOM % 3)); shift 2
    for j in 0 1 2; do
        base=$((start + ((r + j) % 3) * 300 + offset))
        "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
        "$FEDBFT" cluster init --nodes 4 --dir "$dir" --base-port "$base" --force "$@" >/dev/null || return 1
        [ -z "${cluster_hook:-}" ] || "$cluster_hook" || return 1
        "$FEDBFT" cluster up --dir "$dir" > "$dir.up.out" 2>&1 && return 0
        grep -Eq "already in use|already accepts connections" "$dir.up.out" || return 1
        echo "     ports of base $base are in use (another test?); trying another base"
    done
    return 1
}

# load_cluster_cleanup TAIL_LINES: the EXIT trap of a test that runs a load
# ($load_pid, output in $tmp/load.out) against the cluster in $dir: stop both;
# on failure show the node logs' and the load's tails; remove $tmp unless it
# failed and FEDBFT_KEEP_TMP is set.
load_cluster_cleanup() {
    [ -n "${load_pid:-}" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
    "$FEDBFT" cluster down --dir "$dir" >/dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n "$1" "$dir/node$i/node.log" 2>/dev/null; done
        echo "--- load (tail)"; tail -n 5 "$tmp/load.out" 2>/dev/null
    fi
    if [ "${fails:-1}" -ne 0 ] && [ -n "${FEDBFT_KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}

# acked_count: lines in $acked (the `client load --acked` file), 0 if none yet.
acked_count() { [ -f "$acked" ] && wc -l < "$acked" || echo 0; }

# check_acked_on_every_node: with the cluster in $dir stopped, check that
# every node holds every write in $acked with its value (`inspect --check`).
check_acked_on_every_node() {
    local i total
    total=$(acked_count)
    for i in 0 1 2 3; do
        "$FEDBFT" inspect --config "$dir/node$i/node.json" --check "$acked" > "$tmp/inspect$i.out" 2>&1
        check "node $i holds all $total acknowledged writes with their values" test $? -eq 0
        sed 's/^/     /' "$tmp/inspect$i.out"
    done
}
