#!/usr/bin/env bash
# cli_deploy.sh - what the deployment files rely on: `fedbft cluster init
# --hosts/--listen` (one host per replica, the same ports on each, a bind
# address in node.json) and `fedbft probe` (the container health check).
# A 4-node cluster on 127.0.0.1..127.0.0.4 with the same ports on each (all
# of 127/8 is loopback on Linux) commits a put/get, and probe answers 0 when
# ready, 1 on 404, 503 and a refused or silent port, 2 on bad usage
# (ports 11000..11999).
set -u
FEDBFT=${1:?usage: cli_deploy.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-cli-deploy-XXXXXX)
dir=$tmp/up
silent_pid=
cleanup() {
    [ -n "$silent_pid" ] && kill "$silent_pid" 2>/dev/null && wait "$silent_pid" 2>/dev/null
    "$FEDBFT" cluster down --dir "$dir" > /dev/null 2>&1
    if [ "${fails:-1}" -ne 0 ]; then
        for i in 0 1 2 3; do echo "--- node$i.log (tail)"; tail -n 15 "$dir/node$i/node.log" 2>/dev/null; done
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
# json FILE EXPR...: each Python expression over the parsed file (as j), one a line.
json() {
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
for e in sys.argv[2:]:
    print(eval(e))' "$@"
}
hosts4=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4

# ---- help
out=$("$FEDBFT" cluster --help 2>&1)
check "cluster --help shows --hosts and --listen" \
    grep -q -- "\[--host H | --hosts H0,H1,...\] \[--listen ADDR\]" <<< "$out"
out=$("$FEDBFT" probe --help 2>&1)
check "probe --help exits 0" test $? -eq 0
check "probe --help documents every option" bash -c 'for o in --config --host --port --path \
    --timeout-ms; do grep -q -- "  $o" <<< "$1" || exit 1; done' _ "$out"
check "probe --help says what /ready means" grep -q "connected to a quorum" <<< "$out"
check "help probe shows the same usage" test "$("$FEDBFT" help probe 2>&1)" = "$out"
check "fedbft --help lists probe" grep -qE "^  probe +" <<< "$("$FEDBFT" --help)"

# ---- init --hosts with names and --listen: hosts, same ports, listen
d=$tmp/names
"$FEDBFT" cluster init --nodes 4 --dir "$d" --base-port 11000 --clients 2 --model none \
    --hosts n0.fed.test,n1.fed.test,n2.fed.test,n3.fed.test --listen 0.0.0.0 \
    > "$tmp/out" 2> "$tmp/err"
check "init --hosts --listen exits 0" test $? -eq 0
check "init --hosts is quiet on stderr" test ! -s "$tmp/err"
mapfile -t v < <(json "$d/cluster.json" "[r['host'] for r in j['replicas']]" \
    "{(r['port'], r['client_port']) for r in j['replicas']}")
check "replica i is on host i" test "${v[0]:-}" = \
    "['n0.fed.test', 'n1.fed.test', 'n2.fed.test', 'n3.fed.test']"
check "every replica uses ports P and P+100" test "${v[1]:-}" = "{(11000, 11100)}"
for i in 0 1 2 3; do
    mapfile -t v < <(json "$d/node$i/node.json" "j['listen']" "j['http_port']" "j['id']")
    check "node$i.json: listen 0.0.0.0, http_port P+200, id $i" \
        test "${v[*]}" = "0.0.0.0 11200 $i"
done
"$FEDBFT" cluster init --nodes 4 --dir "$tmp/v6" --model none --hosts ::1,::2,::3,::4 \
    --listen :: > /dev/null 2>&1
check "IPv6 --hosts and --listen :: are accepted" \
    test "$(json "$tmp/v6/node3/node.json" "j['listen']")" = "::"
"$FEDBFT" cluster init --nodes 4 --dir "$tmp/plain" --model none --base-port 11000 > /dev/null 2>&1
check "without --hosts replica i still gets port P+i" \
    test "$(json "$tmp/plain/cluster.json" "[r['port'] for r in j['replicas']]")" = \
    "[11000, 11001, 11002, 11003]"
check "without --listen node.json has no listen" \
    test "$(json "$tmp/plain/node0/node.json" "'listen' in j")" = False

# ---- bad --hosts / --listen: exit 2, a reason, nothing written
says_why() { # says_why DESCRIPTION REGEX: $tmp/err matches (shown when it does not)
    grep -q -- "$2" "$tmp/err"
    local rc=$?
    check "$1 says why" test $rc -eq 0
    [ $rc -eq 0 ] || sed 's/^/     /' "$tmp/err"
}
bad() { # bad DESCRIPTION EXPECTED_MESSAGE ARGS...
    local what=$1 msg=$2; shift 2
    rm -rf "$tmp/bad"
    "$FEDBFT" cluster init --nodes 4 --dir "$tmp/bad" --model none "$@" > /dev/null 2> "$tmp/err"
    local rc=$?
    check "$what exits 2" test $rc -eq 2
    says_why "$what" "$msg"
    check "$what writes nothing" test ! -e "$tmp/bad"
}
bad "--hosts with 3 hosts" "3 host(s) listed for --nodes 4" --hosts 127.0.0.1,127.0.0.2,127.0.0.3
bad "--hosts with 5 hosts" "5 host(s) listed for --nodes 4" --hosts "$hosts4,127.0.0.5"
bad "--hosts with an empty item" "item 2 (replica 1) is empty" --hosts 127.0.0.1,,127.0.0.3,127.0.0.4
bad "--hosts with a trailing comma" "5 host(s)" --hosts "$hosts4,"
bad "--hosts with a bad host" "item 3 (replica 2): \"a b\" is not a host name" \
    --hosts 127.0.0.1,127.0.0.2,"a b",127.0.0.4 --listen 0.0.0.0
bad "--hosts with a repeated host" "127.0.0.2 is listed twice (replicas 1 and 3).*leave out --hosts" \
    --hosts 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.2
bad "--host and --hosts together" "--host and --hosts" --host 127.0.0.1 --hosts "$hosts4"
bad "--hosts names without --listen" "--hosts n0: a name, not an IP address.*--listen" \
    --hosts n0,n1,n2,n3
bad "--listen with a name" "--listen 'anywhere': must be an IP address" --listen anywhere
bad "--listen with a short form" "--listen '127.1'" --listen 127.1
bad "--listen empty" "--listen '': must be an IP address" --listen ""
bad "--hosts with a port too high" "--base-port 65400: too high" --hosts "$hosts4" --base-port 65400

# ---- a same-ports cluster on 127.0.0.1..4: up, put/get through consensus
if ! cluster_start 11000 0 --hosts "$hosts4" --model none --durability os; then
    check "cluster up on $hosts4" false
    sed 's/^/     /' "$dir.up.out"
    exit 1
fi
echo "     cluster up on $hosts4, ports $base/$((base + 100))/$((base + 200))"
mapfile -t v < <(json "$dir/cluster.json" "[r['host'] for r in j['replicas']]" \
    "{(r['port'], r['client_port']) for r in j['replicas']}")
check "cluster.json: the four hosts" test "${v[0]:-}" = \
    "['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4']"
check "cluster.json: the same ports on each" test "${v[1]:-}" = "{($base, $((base + 100)))}"
check "cluster up reports node 3 on 127.0.0.4" \
    grep -q "clients on 127.0.0.4:$((base + 100))" "$dir.up.out"
C() { "$FEDBFT" client --cluster "$dir/cluster.json" --key "$dir/clients/client0/node.key" "$@"; }
check "put commits" C put deploy/k1 v1 > /dev/null
check "get reads it back" test "$(C get deploy/k1 2>/dev/null)" = v1

# ---- probe
P() { "$FEDBFT" probe "$@" > "$tmp/probe.out" 2>&1; }
wait_for "probe --config node0 exits 0 once ready" 20 P --config "$dir/node0/node.json"
check "probe prints the URL, 200 OK and the body" \
    grep -qx "probe: http://127.0.0.1:$((base + 200))/ready: 200 OK: ready" "$tmp/probe.out"
wait_for "probe of node3 (host from cluster.json) exits 0" 20 P --config "$dir/node3/node.json"
check "node3 is probed on 127.0.0.4" grep -q "http://127.0.0.4:$((base + 200))/ready: 200" \
    "$tmp/probe.out"
check "probe --host --port exits 0" P --host 127.0.0.2 --port $((base + 200))
check "probe --path /health exits 0" P --config "$dir/node1/node.json" --path /health
P --config "$dir/node0/node.json" --path /nope
check "probe --path /nope exits 1" test $? -eq 1
check "probe shows the 404 and the body's first line" \
    grep -q "/nope: 404 Not Found: not found" "$tmp/probe.out"
# a listen of 0.0.0.0 is probed on 127.0.0.1 (node0's address), :: on ::1
sed "s/\"id\": *1,/\"id\": 1, \"listen\": \"0.0.0.0\",/; s/\"http_port\": *[0-9]*/\"http_port\": $((base + 200))/" \
    "$dir/node1/node.json" > "$dir/node1/probe-any.json"
check "listen 0.0.0.0 is probed as 127.0.0.1" P --config "$dir/node1/probe-any.json"
check "  ... on 127.0.0.1" grep -q "http://127.0.0.1:$((base + 200))/ready" "$tmp/probe.out"
sed 's/"0.0.0.0"/"::"/' "$dir/node1/probe-any.json" > "$dir/node1/probe-any6.json"
P --config "$dir/node1/probe-any6.json"
check "listen :: is probed as [::1] (nothing there: exit 1)" \
    bash -c '[ $1 -eq 1 ] && grep -q "http://\[::1\]:" "$2"' _ $? "$tmp/probe.out"

# two of four down: no quorum, /ready is 503; a stopped node refuses
"$FEDBFT" cluster kill 2 --dir "$dir" > /dev/null && "$FEDBFT" cluster kill 3 --dir "$dir" > /dev/null
check "nodes 2 and 3 killed" test $? -eq 0
not_ready() { P --config "$dir/node0/node.json"; [ $? -eq 1 ] && grep -q " 503 " "$tmp/probe.out"; }
wait_for "probe of node0 without a quorum exits 1 (503)" 20 not_ready
check "probe shows 503 Service Unavailable: not ready" \
    grep -qx "probe: http://127.0.0.1:$((base + 200))/ready: 503 Service Unavailable: not ready" \
    "$tmp/probe.out"
P --config "$dir/node3/node.json"
check "probe of a stopped node exits 1" test $? -eq 1
check "probe says connection refused" \
    grep -qx "probe: http://127.0.0.4:$((base + 200))/ready: connection refused" "$tmp/probe.out"

# a port that accepts but never answers: the timeout
# (it accepts into its backlog and holds the socket until it is killed)
python3 -c 'import signal, socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
print(s.getsockname()[1], flush=True); signal.pause()' > "$tmp/silent.port" &
silent_pid=$!
wait_for "a silent listener is up" 10 test -s "$tmp/silent.port"
t0=$(now_ms)
P --port "$(cat "$tmp/silent.port")" --timeout-ms 300
rc=$? took=$(($(now_ms) - t0))
check "probe of a silent port exits 1" test $rc -eq 1
check "probe says it timed out" grep -q "no answer within 300 ms (timed out)" "$tmp/probe.out"
check "probe gave up after about 300 ms (took $took ms)" test $took -ge 300 -a $took -lt 5000

# ---- bad usage: exit 2 and a reason
badp() { # badp DESCRIPTION EXPECTED_MESSAGE ARGS...
    local what=$1 msg=$2; shift 2
    "$FEDBFT" probe "$@" > /dev/null 2> "$tmp/err"
    local rc=$?
    check "probe $what exits 2" test $rc -eq 2
    says_why "probe $what" "$msg"
}
sed 's/"http_port": *[0-9]*/"http_port": 0/' "$dir/node0/node.json" > "$dir/node0/nohttp.json"
badp "without a target" "give --config NODE_JSON or --port P"
badp "with --config and --port" "--config and --host/--port" --config "$dir/node0/node.json" --port 1
badp "--port 0" "--port 0: must be a TCP port" --port 0
badp "--path without a slash" "--path 'ready': must start with '/'" --port 1 --path ready
badp "--timeout-ms 0" "--timeout-ms 0: must be 1..600000" --port 1 --timeout-ms 0
badp "--host with a space" "--host: \"a b\" is not a host name" --host "a b" --port 1
badp "an unknown option" "--bogus: unknown option" --bogus
badp "a stray argument" "unexpected argument 'extra'" --port 1 extra
badp "--config of a missing file" "no such file" --config "$tmp/none.json"
badp "--config of a node without HTTP" "http_port is 0" --config "$dir/node0/nohttp.json"

echo "cli_deploy: $fails failure(s)"
[ "$fails" -eq 0 ]
