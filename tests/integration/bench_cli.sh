#!/usr/bin/env bash
# bench_cli.sh - `fedbft bench` end to end: usage errors (exit 2 with a
# message), a --local 4 run with --json (throughput > 0, latencies ordered, no
# errors, per-node figures and the verification bound present), --compare
# against doctored baselines (exit 1 when throughput fell or p99 rose beyond
# the threshold, 0 otherwise), --ablation (every row), --keep, an interrupted
# run, a run whose binary is removed midway (the replicas are stopped by
# signal), and nothing left behind: no node processes, no temporary directories.
# No assertion depends on how fast anything runs.
#   bench_cli.sh PATH_TO_FEDBFT
set -u
FEDBFT=${1:?usage: bench_cli.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-benchtest-XXXXXX)
# The bench makes its clusters under $TMPDIR: here, so leftovers are visible.
export TMPDIR=$tmp/t
mkdir -p "$TMPDIR"
cleanup() {
    local c
    for c in $(find "$tmp" -name cluster.json 2>/dev/null); do
        "$FEDBFT" cluster down --dir "$(dirname "$c")" >/dev/null 2>&1
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"

# Ports 61000..62999 belong to this test; a cluster takes P..P+203.
base=$((61000 + (RANDOM % 8) * 250))
B() { "$FEDBFT" bench --base-port "$base" "$@"; }

# Nothing of ours runs and nothing is left in $TMPDIR.
no_leftovers() {
    ! pgrep -f "$tmp" >/dev/null && [ -z "$(ls -A "$TMPDIR")" ]
}
# json_check FILE EXPRESSION: a Python expression over the record r (and, for
# a bench record, l = its latency_us, c = its config, s = its signatures).
json_check() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
d = r if isinstance(r, dict) else {}
l, c, s = d.get("latency_us"), d.get("config"), d.get("signatures")
sys.exit(0 if eval(sys.argv[2]) else 1)
EOF
}

# ---- usage errors: exit 2 and say what is wrong
bad() { # bad DESCRIPTION EXPECTED-MESSAGE ARGS...
    local what=$1 msg=$2; shift 2
    "$FEDBFT" bench "$@" > "$tmp/bad.out" 2> "$tmp/bad.err"
    local rc=$?
    if [ $rc -eq 2 ] && grep -q -- "$msg" "$tmp/bad.err" && [ ! -s "$tmp/bad.out" ]; then
        echo "ok   usage: $what"
    else
        echo "FAIL usage: $what (exit $rc)"; cat "$tmp/bad.err"; fails=$((fails + 1))
    fi
}
bad "no target" "--local N, or --cluster FILE"
bad "both targets" "exclude each other" --local 4 --cluster x.json --keys k
bad "--cluster without --keys" "needs --keys" --cluster x.json
bad "--keys with --local" "--keys is for --cluster" --local 4 --keys k
bad "--local too small" "--local 3: must be 4..100" --local 3
bad "local-only option with --cluster" "need --local" --cluster x.json --keys k --batch-max 1
bad "--rate 0" "--rate 0:" --local 4 --rate 0
bad "--rate not a number" "--rate fast:" --local 4 --rate fast
bad "--read-ratio above 1" "--read-ratio 1.5:" --local 4 --read-ratio 1.5
bad "--payload too big" "--payload 70000:" --local 4 --payload 70000
bad "--duration 0" "--duration 0:" --local 4 --duration 0
bad "--clients 0" "--clients 0:" --local 4 --clients 0
bad "--verify value" "--verify fast: must be inline or batch" --local 4 --verify fast
bad "--durability value" "--durability none:" --local 4 --durability none
bad "--base-port too high" "too high" --local 4 --base-port 65400
bad "--ablation unknown switch" "unknown switch 'foo'" --local 4 --ablation=foo
bad "--ablation with a switch" "--ablation sets the switches" --local 4 --ablation --no-sig-cache
bad "--ablation with --compare" "does not combine" --local 4 --ablation --compare x.json
bad "--rounds without --ablation" "--rounds is for --ablation" --local 4 --rounds 2
bad "--rounds 0" "--rounds 0: must be 1..20" --local 4 --ablation --rounds 0
bad "unknown option" "--bogus: unknown option" --local 4 --bogus
bad "missing value" "--clients: needs a value" --local 4 --clients
bad "stray argument" "unexpected argument 'extra'" --local 4 extra
bad "--compare missing file" "--compare $tmp/none.json" --local 4 --compare "$tmp/none.json"
echo '[{"x": 1}]' > "$tmp/array.json"
bad "--compare an array" "single run" --local 4 --compare "$tmp/array.json"
"$FEDBFT" bench --help > "$tmp/help.out"
check "--help exits 0" test $? -eq 0
check "--help documents every option" bash -c "for o in --local --cluster --keys --base-port \
    --durability --keep --batch-max --verify --no-digest-cache --no-sig-cache --ablation \
    --clients --rate --payload --read-ratio --warmup --duration --timeout --json --compare \
    --threshold --cores --rounds; do grep -q -- \"\$o\" '$tmp/help.out' || exit 1; done"
"$FEDBFT" help bench | cmp -s - "$tmp/help.out"
check "'fedbft help bench' is the same help" test $? -eq 0

# ---- one run, JSON
B --local 4 --duration 2 --warmup 1 --json > "$tmp/run.json" 2> "$tmp/run.err"
rc=$?
check "--local 4 --json exits 0" test $rc -eq 0
[ $rc -eq 0 ] || cat "$tmp/run.err"
check "the JSON parses" json_check "$tmp/run.json" 'r["fedbft_bench"] == 1'
check "throughput > 0" json_check "$tmp/run.json" 'r["throughput_ops_s"] > 0 and r["ops"] > 0'
check "p50 <= p90 <= p99 <= p99.9 <= max" json_check "$tmp/run.json" \
    '0 < l["p50"] <= l["p90"] <= l["p99"] <= l["p999"] <= l["max"]'
check "no errors, timeouts or missed" json_check "$tmp/run.json" \
    'r["errors"] == 0 and r["timeouts"] == 0 and r["missed"] == 0'
check "the configuration is recorded" json_check "$tmp/run.json" \
    'c["nodes"] == 4 and c["clients"] == 8 and c["payload_bytes"] == 64 and c["durability"] == "os" and c["load"] == "closed"'
check "view changes counted" json_check "$tmp/run.json" 'r["view_changes"] is not None'
check "every node has CPU and RSS" json_check "$tmp/run.json" \
    'len(r["nodes"]) == 4 and all(n["cpu_percent"] is not None and n["rss_mib"] > 0 for n in r["nodes"])'
check "the verification bound is computed" json_check "$tmp/run.json" \
    's["verify_us"] > 0 and s["verifications_per_op"] > 0 and s["bound_ops_s"] > 0 and 0 < s["fraction_of_bound"] and s["protocol_min_per_op"] > 4'
check "Ed25519 is timed on every core before and after the load; the bound uses the mean" json_check "$tmp/run.json" \
    's["verify_threads"] == c["cores"] and s["verify_us_before"] > 0 and s["verify_us_after"] > 0 and abs(s["verify_us"] - (s["verify_us_before"] + s["verify_us_after"]) / 2) < 1e-6'
check "every node's CPU splits by thread (loop, verifier, store) and adds up to its CPU%" \
    json_check "$tmp/run.json" \
    'all(t["loop"] > 0 and t["verify"] > 0 and t["store"] > 0 and abs(sum(t.values()) - n["cpu_percent"]) <= max(3, 0.15 * n["cpu_percent"]) for n in r["nodes"] for t in [n["threads_cpu_percent"]])'
check "every node times its verification jobs, store commits and request phases" \
    json_check "$tmp/run.json" \
    'all(t["verify_job_ms"] > 0 and t["store_commit_ms"] > 0 and all(t["phase_ms"][p] > 0 for p in ("prepared", "committed", "executed")) for n in r["nodes"] for t in [n["timing"]])'
check "only the primary (node 0) sees requests arrive" json_check "$tmp/run.json" \
    'r["nodes"][0]["timing"]["phase_ms"]["pre_prepared"] > 0'
check "status lines went to stderr, not into the JSON" grep -q "starting 4 replicas" "$tmp/run.err"
check "nothing left after the run" no_leftovers

# ---- --compare against doctored baselines (text output)
doctor() { # doctor OUT PYTHON-STATEMENTS-ON-r
    python3 - "$tmp/run.json" "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(r, open(sys.argv[2], "w"))
EOF
}
doctor "$tmp/fast.json" 'r["throughput_ops_s"] *= 10'
doctor "$tmp/slow.json" 'r["throughput_ops_s"] *= 0.1
for k in ("p50", "p90", "p99", "p999", "max"): r["latency_us"][k] *= 100'
doctor "$tmp/lowp99.json" 'r["throughput_ops_s"] *= 0.1
r["latency_us"]["p99"] /= 100'
B --local 4 --duration 1 --warmup 0.5 --compare "$tmp/fast.json" > "$tmp/cmp1.out" 2>&1
check "a baseline with 10x the throughput: exit 1" test $? -eq 1
check "... names the regression" grep -q "throughput ops/s.*REGRESSION" "$tmp/cmp1.out"
B --local 4 --duration 1 --warmup 0.5 --compare "$tmp/slow.json" > "$tmp/cmp2.out" 2>&1
rc=$?
check "a baseline with 0.1x the throughput: exit 0" test $rc -eq 0
[ $rc -eq 0 ] || cat "$tmp/cmp2.out"
check "... prints the results and each change" \
    bash -c "grep -q '^throughput' '$tmp/cmp2.out' && grep -q 'latency p99 ' '$tmp/cmp2.out' && grep -q 'no regression' '$tmp/cmp2.out'"
B --local 4 --duration 1 --warmup 0.5 --json --compare "$tmp/lowp99.json" > "$tmp/cmp3.json" 2>/dev/null
check "p99 100x above the baseline's: exit 1" test $? -eq 1
check "... and the JSON carries the comparison" json_check "$tmp/cmp3.json" \
    'r["compare"]["regression"] and r["compare"]["latency_us.p99"]["regression"]'
check "nothing left after the comparisons" no_leftovers

# ---- ablation: every row, then a JSON array with --keep
# 8 clients: without batching the primary's window fills between checkpoints,
# and a primary that did not propose again when a peer's CHECKPOINT moved it
# completed nothing in the measured second (test_pbft checks the step itself).
B --local 4 --clients 8 --duration 1 --warmup 2 --ablation > "$tmp/abl.out" 2> "$tmp/abl.err"
rc=$?
check "--ablation exits 0" test $rc -eq 0
[ $rc -eq 0 ] || { cat "$tmp/abl.out" "$tmp/abl.err"; }
for row in "default" "no batching" "verify inline" "no digest cache" "no sig cache"; do
    check "ablation row: $row" grep -Eq "^$row +[0-9.]+ ops/s" "$tmp/abl.out"
done
check "the default row's ratios are 1.00" grep -Eq "^default .* 1\.00 +1\.00$" "$tmp/abl.out"
check "nothing left after the ablation" no_leftovers

B --local 4 --clients 2 --duration 1 --warmup 2 --ablation=batch --json --keep "$tmp/kept" \
    > "$tmp/abl.json" 2> "$tmp/abl2.err"
rc=$?
check "--ablation=batch --json --keep exits 0" test $rc -eq 0
[ $rc -eq 0 ] || cat "$tmp/abl2.err"
check "... a JSON array of two rows with ratios" json_check "$tmp/abl.json" \
    '[x["label"] for x in r] == ["default", "no batching"] and r[0]["throughput_ratio"] == 1 and r[1]["throughput_ratio"] > 0 and r[1]["p99_ratio"] > 0'
check "... the switch reached node.json" json_check "$tmp/kept/no-batching/node2/node.json" \
    'r["batch_max_requests"] == 1'
kept_stopped() { ! pgrep -f "$tmp/kept" >/dev/null; }
check "... the kept clusters are stopped" kept_stopped
check "... and the default one untouched" json_check "$tmp/kept/default/node0/node.json" \
    'r["batch_max_requests"] != 1'

B --local 4 --duration 1 --warmup 0.5 --ablation=verify --rounds 2 --json > "$tmp/abl3.json" \
    2> "$tmp/abl3.err"
check "--ablation=verify --rounds 2 --json exits 0" test $? -eq 0
check "... each row is the median of 2 rounds, with both rounds' throughput" \
    json_check "$tmp/abl3.json" \
    '[x["label"] for x in r] == ["default", "verify inline"] and all(x["rounds"] == 2 and len(x["round_throughputs_ops_s"]) == 2 and min(x["round_throughputs_ops_s"]) <= x["throughput_ops_s"] <= max(x["round_throughputs_ops_s"]) for x in r)'
check "... verifier threads work in the default row, none exist when verifying inline" \
    json_check "$tmp/abl3.json" \
    'all(n["threads_cpu_percent"]["verify"] > 0 for n in r[0]["nodes"]) and all(n["threads_cpu_percent"]["verify"] == 0 and n["threads_cpu_percent"]["loop"] > 0 for n in r[1]["nodes"])'
check "nothing left after the rounds" no_leftovers

# ---- a run interrupted by SIGINT stops and removes its cluster
"$FEDBFT" bench --base-port "$base" --local 4 --duration 60 --warmup 1 > "$tmp/int.out" 2> "$tmp/int.err" &
pid=$!
running() { grep -q "committed" "$tmp/int.err" 2>/dev/null || [ -n "$(find "$TMPDIR" -name node.pid 2>/dev/null | head -1)" ]; }
wait_for "the interrupted run's cluster is starting" 60 running
kill -INT $pid
wait $pid
check "SIGINT: exit 130" test $? -eq 130
check "SIGINT: says so" grep -q "interrupted by signal 2" "$tmp/int.err"
wait_for "SIGINT: no node process or directory left" 30 no_leftovers

# ---- its binary removed during the run: `cluster down` cannot run, so the
# bench stops the replicas by signal; nothing is left behind either
mkdir -p "$tmp/bin" && cp "$FEDBFT" "$tmp/bin/fedbft"
"$tmp/bin/fedbft" bench --base-port "$base" --local 4 --duration 3 --warmup 0.5 \
    > "$tmp/gone.out" 2> "$tmp/gone.err" &
pid=$!
# Every replica makes its admin socket once it runs (the binary executed):
# from then on nothing runs the binary again until `cluster down` at the end.
all_up() { [ "$(find "$TMPDIR" -name admin.sock 2>/dev/null | wc -l)" -eq 4 ]; }
wait_for "the run whose binary goes away has its 4 replicas running" 60 all_up
rm -f "$tmp/bin/fedbft"
wait $pid
check "binary gone: the run still reports and exits 0" test $? -eq 0
check "... cluster down failed, and the bench says it stopped the replicas itself" \
    grep -q "stopped 4 replica(s) of .* by signal" "$tmp/gone.err"
wait_for "binary gone: no node process or directory left" 30 no_leftovers

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
