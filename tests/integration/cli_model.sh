#!/usr/bin/env bash
# cli_model.sh - `fedbft model synth`, `quantize`, `info` and `run` end to
# end: a tiny model is written, inspected, quantized to Q8_0 and inspected
# again; the small preset has the expected size; `run` generates text and
# JSON with the same bits on every kernel path; bad usage exits 2 and bad
# files exit 1, each with a message that names the problem.
set -u
FEDBFT=${1:?usage: cli_model.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-model-XXXXXX)
trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
. "$(dirname "$0")/lib.sh"

# synth tiny, then info on it
out=$("$FEDBFT" model synth --preset tiny --out "$tmp/tiny.gguf" 2>&1)
check "synth tiny exits 0" test $? -eq 0
check "synth reports what it wrote" grep -q "wrote $tmp/tiny.gguf" <<< "$out"
size=$(stat -c %s "$tmp/tiny.gguf")
check "tiny is under 1 MB" test "$size" -lt 1000000
"$FEDBFT" model info "$tmp/tiny.gguf" > "$tmp/info" 2>&1
check "model info reads the tiny model" test $? -eq 0
check "info shows the llama architecture" grep -q 'general.architecture.*"llama"' "$tmp/info"
check "info shows 2 kv heads" grep -Eq 'head_count_kv +uint32 +2$' "$tmp/info"
check "info shows F32 matrices" grep -Eq 'blk.0.attn_q.weight +F32 +\[64, 64\]' "$tmp/info"
"$FEDBFT" model synth --preset tiny --out "$tmp/tiny2.gguf" > /dev/null 2>&1
check "synth is deterministic" cmp -s "$tmp/tiny.gguf" "$tmp/tiny2.gguf"
"$FEDBFT" model synth --preset tiny --seed 9 --out "$tmp/tiny9.gguf" > /dev/null 2>&1
check "another seed gives another model" test "$(cmp -s "$tmp/tiny.gguf" "$tmp/tiny9.gguf"; echo $?)" = 1

# quantize to Q8_0
out=$("$FEDBFT" model quantize "$tmp/tiny.gguf" "$tmp/tiny.q8.gguf" --type q8_0 2>&1)
check "quantize exits 0" test $? -eq 0
check "quantize prints both sizes and the ratio" \
    grep -Eq "wrote .*tiny.q8.gguf: [0-9.]+ MB \(Q8_0\), input [0-9.]+ MB \(F32\): 0\.[0-9]+x" <<< "$out"
"$FEDBFT" model info "$tmp/tiny.q8.gguf" > "$tmp/info8" 2>&1
check "model info reads the Q8_0 model" test $? -eq 0
check "info shows Q8_0 matrices" grep -Eq 'blk.0.attn_q.weight +Q8_0 +\[64, 64\]' "$tmp/info8"
check "info shows file_type 7" grep -Eq 'general.file_type +uint32 +7$' "$tmp/info8"
check "norms stay F32" grep -Eq 'output_norm.weight +F32' "$tmp/info8"
check "the Q8_0 file is smaller" test "$(stat -c %s "$tmp/tiny.q8.gguf")" -lt "$size"
"$FEDBFT" model quantize "$tmp/tiny.gguf" "$tmp/tiny.q8.gguf" > /dev/null 2> "$tmp/err"
check "quantize refuses to overwrite" test $? -eq 1
check "the refusal says so" grep -q "refusing to overwrite" "$tmp/err"
"$FEDBFT" model quantize "$tmp/tiny.gguf" "$tmp/tiny.q8.gguf" --force > /dev/null 2>&1
check "quantize --force replaces" test $? -eq 0

# usage errors: exit 2
"$FEDBFT" model synth --preset huge --out "$tmp/x.gguf" > /dev/null 2> "$tmp/err"
check "unknown preset exits 2" test $? -eq 2
check "unknown preset is named" grep -q "unknown preset 'huge'" "$tmp/err"
"$FEDBFT" model synth --preset tiny --type q4_0 --out "$tmp/x.gguf" > /dev/null 2> "$tmp/err"
check "unknown synth --type exits 2" test $? -eq 2
check "unknown synth --type is named" grep -q "unknown --type 'q4_0'" "$tmp/err"
"$FEDBFT" model quantize "$tmp/tiny.gguf" "$tmp/x.gguf" --type q5_k > /dev/null 2> "$tmp/err"
check "unknown quantize --type exits 2" test $? -eq 2
check "unknown quantize --type is named" grep -q "unknown --type 'q5_k'" "$tmp/err"
"$FEDBFT" model synth --preset tiny > /dev/null 2> "$tmp/err"
check "synth without --out exits 2" test $? -eq 2
check "missing --out is named" grep -q -- "--out FILE is required" "$tmp/err"
"$FEDBFT" model quantize "$tmp/tiny.gguf" > /dev/null 2>&1
check "quantize with one file exits 2" test $? -eq 2
"$FEDBFT" model frobnicate > /dev/null 2>&1
check "unknown model subcommand exits 2" test $? -eq 2
check "no file written on usage errors" test ! -e "$tmp/x.gguf"

# bad files: exit 1
"$FEDBFT" model quantize "$tmp/nope.gguf" "$tmp/x.gguf" > /dev/null 2> "$tmp/err"
check "missing input exits 1" test $? -eq 1
check "missing input is named" grep -q "nope.gguf" "$tmp/err"
head -c 5000 "$tmp/tiny.gguf" > "$tmp/cut.gguf"
"$FEDBFT" model quantize "$tmp/cut.gguf" "$tmp/x.gguf" > /dev/null 2> "$tmp/err"
check "truncated input exits 1" test $? -eq 1
check "truncated input is named" grep -q "cut.gguf" "$tmp/err"
printf 'not a model at all' > "$tmp/junk.gguf"
"$FEDBFT" model quantize "$tmp/junk.gguf" "$tmp/x.gguf" > /dev/null 2> "$tmp/err"
check "corrupt input exits 1" test $? -eq 1
check "corrupt input is named" grep -q "junk.gguf" "$tmp/err"
"$FEDBFT" model synth --preset tiny --out "$tmp/no/such/dir/m.gguf" > /dev/null 2> "$tmp/err"
check "missing output dir exits 1" test $? -eq 1
check "missing output dir is named" grep -q "no/such/dir/m.gguf" "$tmp/err"
: > "$tmp/afile"
"$FEDBFT" model quantize "$tmp/tiny.gguf" "$tmp/afile/m.gguf" > /dev/null 2> "$tmp/err"
check "output under a file exits 1" test $? -eq 1
check "output under a file is named" grep -q "afile/m.gguf" "$tmp/err"
# an output directory that cannot be written: a read-only one, or for root
# (who ignores directory permissions) sysfs
rodir="$tmp/ro"
mkdir "$rodir" && chmod 555 "$rodir"
[ "$(id -u)" -eq 0 ] && rodir=/sys
if touch "$rodir/.probe" 2> /dev/null; then
    rm -f "$rodir/.probe"
    skip "read-only output dir (this user can write everywhere)"
else
    "$FEDBFT" model synth --preset tiny --out "$rodir/m.gguf" > /dev/null 2> "$tmp/err"
    check "read-only output dir exits 1" test $? -eq 1
    check "read-only output dir is named" grep -q "$rodir/m.gguf" "$tmp/err"
    check "and the reason given" grep -qi "permission denied" "$tmp/err"
fi
check "no temporary files left" test -z "$(find "$tmp" -name '*.tmp-*')"

# the small preset: Q8_0 by default, about 30 MB
out=$("$FEDBFT" model synth --preset small --out "$tmp/small.gguf" 2>&1)
check "synth small exits 0" test $? -eq 0
size=$(stat -c %s "$tmp/small.gguf")
check "small is about 30 MB (got $size bytes)" test "$size" -gt 28000000 -a "$size" -lt 32000000
"$FEDBFT" model info "$tmp/small.gguf" > "$tmp/infos" 2>&1
check "info shows small's Q8_0 matrices" \
    grep -Eq 'blk.7.ffn_down.weight +Q8_0 +\[1408, 512\]' "$tmp/infos"
check "small has a 2048-token vocabulary" grep -Eq 'llama.vocab_size +uint32 +2048$' "$tmp/infos"

# model run: text, JSON, logits; the same output on every kernel path and
# thread count; seeded sampling reproducible; bad usage and bad files
out=$("$FEDBFT" model run --model "$tmp/tiny.gguf" --prompt "the nodes agree" --max-tokens 12 2>&1)
check "run exits 0 and prints text" test $? -eq 0 -a -n "$out"
j1=$("$FEDBFT" model run --model "$tmp/small.gguf" --prompt "The federation agreed on" \
    --max-tokens 16 --json --ignore-eos --logits "$tmp/l1" --threads 2)
check "run --json exits 0" test $? -eq 0
check "JSON has prompt ids, generated ids, text and timings" python3 -c '
import json, sys
o = json.loads(sys.argv[1])
assert o["prompt_tokens"][0] == 1 and len(o["tokens"]) == 16
assert bytes.fromhex(o["text_hex"]).decode("utf-8", "replace") == o["text"]
assert o["decode_tokens_per_s"] > 0' "$j1"
check "logits file holds n_vocab floats" test "$(stat -c %s "$tmp/l1")" -eq $((2048 * 4))
j2=$("$FEDBFT" model run --model "$tmp/small.gguf" --prompt "The federation agreed on" \
    --max-tokens 16 --json --ignore-eos --logits "$tmp/l2" --threads 1 --scalar)
tokens() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])["tokens"])' "$1"; }
check "scalar, 1 thread: the same tokens as SIMD, 2 threads" test "$(tokens "$j1")" = "$(tokens "$j2")"
check "scalar, 1 thread: bit-identical logits" cmp -s "$tmp/l1" "$tmp/l2"
s1=$("$FEDBFT" model run --model "$tmp/small.gguf" --prompt "x" --max-tokens 12 --json \
    --ignore-eos --temperature 0.9 --top-k 50 --top-p 0.95 --seed 7)
s2=$("$FEDBFT" model run --model "$tmp/small.gguf" --prompt "x" --max-tokens 12 --json \
    --ignore-eos --temperature 0.9 --top-k 50 --top-p 0.95 --seed 7 --threads 1)
check "seeded sampling is reproducible" test "$(tokens "$s1")" = "$(tokens "$s2")"
"$FEDBFT" model run --model "$tmp/tiny.gguf" > /dev/null 2> "$tmp/err"
check "run without --prompt exits 2" test $? -eq 2
check "and says what is missing" grep -q -- "--prompt" "$tmp/err"
"$FEDBFT" model run --model "$tmp/tiny.gguf" --prompt x --top-p 2 > /dev/null 2> "$tmp/err"
check "run with --top-p 2 exits 2" test $? -eq 2
"$FEDBFT" model run --model "$tmp/nope.gguf" --prompt x > /dev/null 2> "$tmp/err"
check "run on a missing model exits 1" test $? -eq 1
check "and names the file" grep -q "nope.gguf" "$tmp/err"
"$FEDBFT" model run --model "$tmp/tiny.gguf" --prompt x --ctx 8 --max-tokens 20 > /dev/null 2> "$tmp/err"
check "a context too small is refused" test $? -eq 1
check "and explained" grep -q "exceed the context" "$tmp/err"

echo "$fails failure(s), $skips skipped"
test "$fails" -eq 0
