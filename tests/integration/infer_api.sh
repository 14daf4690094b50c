#!/usr/bin/env bash
# infer_api.sh - the inference HTTP API of a real 4-node cluster serving the
# synthesized small model that `cluster init` puts in place: /v1/models,
# completions (greedy, seeded, streamed as server-sent events), the same
# output digest on two replicas, the response cache and single-flight (50
# identical concurrent requests computed once), every error path in OpenAI's
# error shape, a full queue and a rate limit (429 with Retry-After), INFER
# through consensus with f+1 matching digests (and one lying replica
# outvoted), the pinned model digest, and the admin `batcher` / `cache`
# commands and inference metrics.
#   infer_api.sh PATH_TO_FEDBFT
set -u
FEDBFT=${1:?usage: infer_api.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-infer-XXXXXX)
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

# Below the ephemeral range (32768+, where outgoing connections take ports)
# and above the 10000..30183 the other cluster tests draw from.
base=$((30200 + (RANDOM % 12) * 200))
"$FEDBFT" cluster init --nodes 4 --dir "$dir" --base-port "$base" --durability os > "$tmp/init.out" 2>&1
check "cluster init synthesizes the model" test -s "$dir/model.gguf"
check "nodes are configured to serve it" grep -q '"model": *"../model.gguf"' "$dir/node0/node.json"
# node 2: a tight rate limit; node 3: one slot and a queue of one
python3 - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
for i, knobs in ((2, {"rate_per_s": 1, "rate_burst": 2}),
                 (3, {"max_batch": 1, "max_queue": 1, "cache_entries": 0})):
    p = f"{d}/node{i}/node.json"
    cfg = json.load(open(p))
    cfg["inference"].update(knobs)
    json.dump(cfg, open(p, "w"), indent=2)
EOF
if ! "$FEDBFT" cluster up --dir "$dir" > "$tmp/up.out" 2>&1; then
    echo "FAIL cluster up"; cat "$tmp/up.out"; fails=1; exit 1
fi
echo "ok   cluster up"

ctl() { "$FEDBFT" ctl --socket "$dir/node$1/data/admin.sock" --json --timeout 5000 "${@:2}"; }

# The HTTP checks, in Python (urllib and threads only).
python3 - "$base" > "$tmp/py.out" 2>&1 <<'EOF'
import json, sys, threading, urllib.request, urllib.error
base = int(sys.argv[1])
fails = 0
def check(what, ok):
    global fails
    print(("ok   " if ok else "FAIL ") + what)
    fails += 0 if ok else 1
def url(node, path):
    return f"http://127.0.0.1:{base + 200 + node}{path}"
def call(node, path, body=None, method=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url(node, path), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
def err_shape(b):
    try:
        e = json.loads(b)["error"]
        return isinstance(e["message"], str) and e["message"] and "type" in e
    except Exception:
        return False

st, _, b = call(0, "/v1/models")
models = json.loads(b) if st == 200 else {}
check("GET /v1/models lists the model", st == 200 and models["data"][0]["object"] == "model")
model = models["data"][0]["id"] if st == 200 else "?"

greedy = {"model": model, "prompt": "The federation agreed on", "max_tokens": 12,
          "temperature": 0}
st, _, b = call(0, "/v1/completions", greedy)
r0 = json.loads(b) if st == 200 else {}
check("a greedy completion", st == 200 and r0["object"] == "text_completion"
      and isinstance(r0["choices"][0]["text"], str))
check("usage counts prompt and completion tokens",
      st == 200 and r0["usage"]["completion_tokens"] == 12
      and r0["usage"]["total_tokens"] == r0["usage"]["prompt_tokens"] + 12)
check("finish_reason length at max_tokens", st == 200 and r0["choices"][0]["finish_reason"] == "length")
st, _, b = call(1, "/v1/completions", greedy)
r1 = json.loads(b) if st == 200 else {}
check("another replica computes the same output digest",
      st == 200 and r1["fedbft"]["output_digest"] == r0["fedbft"]["output_digest"]
      and r1["choices"][0]["text"] == r0["choices"][0]["text"])
st, _, b = call(0, "/v1/completions", greedy)
check("the repeat is answered from the cache",
      st == 200 and json.loads(b)["fedbft"]["cached"] is True
      and json.loads(b)["choices"][0]["text"] == r0["choices"][0]["text"])

# streaming: SSE chunks that add up to the same text
req = urllib.request.Request(url(1, "/v1/completions"),
                             data=json.dumps(dict(greedy, stream=True)).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    ctype = r.headers.get("Content-Type", "")
    events = [l[6:] for l in r.read().decode().split("\n") if l.startswith("data: ")]
text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
check("stream is text/event-stream", ctype.startswith("text/event-stream"))
check("stream ends with [DONE]", events and events[-1] == "[DONE]")
check("streamed text equals the plain completion", text == r0["choices"][0]["text"])
check("last chunk carries finish_reason",
      len(events) > 1 and json.loads(events[-2])["choices"][0]["finish_reason"] == "length")

# a stop string ends the completion and is cut, streamed or not
full = r0["choices"][0]["text"]
stop = full[6:9] if len(full) > 9 else "zz"
st, _, b = call(0, "/v1/completions", dict(greedy, stop=[stop]))
plain = json.loads(b)["choices"][0]["text"] if st == 200 else None
check("stop string: the text ends before it", st == 200 and plain == full[:full.find(stop)]
      and json.loads(b)["choices"][0]["finish_reason"] == "stop")
req = urllib.request.Request(url(0, "/v1/completions"),
                             data=json.dumps(dict(greedy, stop=[stop], stream=True)).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    events = [l[6:] for l in r.read().decode().split("\n") if l.startswith("data: ")]
streamed = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
check("stop string: the stream never shows it", streamed == plain)

# single-flight: 50 identical requests at once, computed once
sf = {"prompt": "Single flight", "max_tokens": 24, "temperature": 0.8, "seed": 4242}
results = []
def one():
    results.append(call(1, "/v1/completions", sf))
threads = [threading.Thread(target=one) for _ in range(50)]
for t in threads: t.start()
for t in threads: t.join()
texts = {json.loads(b)["choices"][0]["text"] for s, _, b in results if s == 200}
check("50 identical concurrent requests all succeed", len(results) == 50 and all(s == 200 for s, _, _ in results))
check("and agree", len(texts) == 1)
print("single_flight_done")

# errors in OpenAI's shape
for what, body, code in [
    ("bad JSON", b"{nope", 400), ("missing prompt", json.dumps({"max_tokens": 3}).encode(), 400),
    ("max_tokens too large", json.dumps({"prompt": "x", "max_tokens": 100000}).encode(), 400),
    ("temperature out of range", json.dumps({"prompt": "x", "temperature": 5}).encode(), 400),
    ("n > 1", json.dumps({"prompt": "x", "n": 2}).encode(), 400),
    ("prompt of bad token ids", json.dumps({"prompt": [1, 99999999]}).encode(), 400)]:
    st, _, b = call(0, "/v1/completions", raw=body)
    check(f"{what}: {code} with an error object", st == code and err_shape(b))
st, _, b = call(0, "/v1/completions")
check("GET /v1/completions: 405", st == 405 and err_shape(b))
st, _, b = call(0, "/v1/nothing")
check("unknown endpoint: 404", st == 404 and err_shape(b))
st, _, b = call(0, "/v1/completions", raw=b"x" * (300 * 1024))
check("oversized body: 413", st == 413)

# rate limit on node 2: burst 2, then 429 with Retry-After
codes = [call(2, "/v1/completions", {"prompt": "r", "max_tokens": 1, "temperature": 0}) for _ in range(3)]
check("rate limit: the burst passes", codes[0][0] == 200 and codes[1][0] == 200)
check("rate limit: then 429 with Retry-After",
      codes[2][0] == 429 and "Retry-After" in codes[2][1] and err_shape(codes[2][2]))

# node 3 has one slot and a queue of one: a burst of streams overflows it
res3 = []
def long_one(i):
    res3.append(call(3, "/v1/completions", {"prompt": f"q{i}", "max_tokens": 200, "temperature": 0.7}))
threads = [threading.Thread(target=long_one, args=(i,)) for i in range(6)]
for t in threads: t.start()
for t in threads: t.join()
full = [r for r in res3 if r[0] == 429]
check("a full queue answers 429 at once", len(full) >= 1 and all(err_shape(r[2]) for r in full))
check("and the admitted requests complete", any(r[0] == 200 for r in res3))
sys.exit(1 if fails else 0)
EOF
py=$?
cat "$tmp/py.out"
fails=$((fails + $(grep -c '^FAIL' "$tmp/py.out")))
check "the HTTP checks ran to the end" test "$py" -eq 0 -o "$(grep -c '^FAIL' "$tmp/py.out")" -gt 0

# admin commands and metrics
b=$(ctl 1 batcher)
check "admin batcher shows the batch-size histogram" grep -q '"batch_size_histogram"' <<< "$b"
completed=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["completed"])' "$b" 2>/dev/null || echo -1)
# node 1 computed: the greedy one, the stream, and the single-flight request once
check "single-flight: 50 identical requests computed once (node 1 completed $completed)" test "$completed" -eq 3
c=$(ctl 1 cache)
check "admin cache counts the 49 followers as coalesced or hits" python3 -c '
import json, sys; s = json.loads(sys.argv[1]); assert s["coalesced"] + s["hits"] >= 49, s' "$c"
c=$(ctl 1 cache clear=true)
check "admin cache clear=true empties it" python3 -c '
import json, sys; s = json.loads(sys.argv[1]); assert s["cleared"] and s["entries"] == 0, s' "$c"
m=$(curl -s "http://127.0.0.1:$((base + 200))/metrics")
check "metrics: requests by result" grep -q 'fedbft_inference_requests_total{result="ok"}' <<< "$m"
check "metrics: tokens generated" grep -q '^fedbft_inference_tokens_generated_total' <<< "$m"
check "metrics: cache hits" grep -q '^fedbft_inference_cache_hits_total' <<< "$m"

# INFER through consensus: ordered, run by every replica, accepted on f+1
# matching output digests; one lying replica is outvoted
C="$FEDBFT client --cluster $dir/cluster.json --key $dir/clients/client0/node.key --timeout 20000"
http_text=$(curl -s "http://127.0.0.1:$((base + 200))/v1/completions" \
    -d '{"prompt": "The federation agreed on", "max_tokens": 12, "temperature": 0}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["text"])')
out=$($C infer --max-tokens 12 "The federation agreed on" 2> "$tmp/infer.err"); rc=$?
check "client infer exits 0" test $rc -eq 0
check "f+1 replicas agreed on the output" grep -q "agreed by replicas" "$tmp/infer.err"
check "the consensus output equals the HTTP API's (same model, same numerics)" test "$out" = "$http_text"
check "cluster.json pins the model digest" grep -q '"model_digest"' "$dir/cluster.json"
ctl 3 fault infer_lie=true > /dev/null
out2=$($C infer --max-tokens 12 "The federation agreed on" 2> "$tmp/infer2.err"); rc=$?
check "with replica 3 lying, infer still exits 0" test $rc -eq 0
check "with the honest output" test "$out2" = "$http_text"
check "and the lying replica is not among those that agreed" \
    sh -c 'grep "agreed by replicas" "$1" | grep -qv "replicas.* 3 "' _ "$tmp/infer2.err"
ctl 3 fault clear=true > /dev/null
$C infer --max-tokens 0 "x" > /dev/null 2> "$tmp/infer3.err"; rc=$?
check "an invalid INFER is refused by consensus (exit 2)" test $rc -eq 2
check "with the reason" grep -q "max_tokens must be 1..4096" "$tmp/infer3.err"
# a replica configured with another model refuses to start
"$FEDBFT" model synth --preset tiny --out "$tmp/other.gguf" > /dev/null
python3 -c '
import json, sys
c = json.load(open(sys.argv[1])); c["inference"]["model"] = sys.argv[3]
c["data_dir"] = sys.argv[4]
json.dump(c, open(sys.argv[2], "w"))' "$dir/node3/node.json" "$dir/node3/other.json" "$tmp/other.gguf" "$tmp/otherdata"
timeout 20 "$FEDBFT" run --config "$dir/node3/other.json" > "$tmp/other.out" 2>&1; rc=$?
check "a replica serving another model will not start" test $rc -ne 0
check "and says which digest cluster.json pins" grep -q "pins model_digest" "$tmp/other.out"

# a cluster that serves no model answers 503
dir2=$tmp/nomodel
"$FEDBFT" cluster init --nodes 4 --dir "$dir2" --base-port $((base + 5)) --durability os --model none > /dev/null 2>&1
check "init --model none pins no digest" sh -c '! grep -q model_digest "$1/cluster.json"' _ "$dir2"
if "$FEDBFT" cluster up --dir "$dir2" > /dev/null 2>&1; then
    code=$(curl -s -o "$tmp/nm.json" -w '%{http_code}' "http://127.0.0.1:$((base + 205))/v1/completions" -d '{"prompt":"x"}')
    check "no model: 503" test "$code" = 503
    check "no model: OpenAI error naming inference.model" grep -q '"error".*inference.model' "$tmp/nm.json"
    out=$(ctl_dir() { "$FEDBFT" ctl --socket "$dir2/node0/data/admin.sock" --json batcher 2>&1; }; ctl_dir)
    check "no model: admin batcher says so" grep -q "serves no model" <<< "$out"
fi
"$FEDBFT" cluster down --dir "$dir2" > /dev/null 2>&1

echo "$fails failure(s), $skips skipped"
test "$fails" -eq 0
