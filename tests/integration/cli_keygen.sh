#!/usr/bin/env bash
# cli_keygen.sh - the fedbft binary: --help for every command, keygen writes a
# usable 0600 key, refuses to overwrite, and rejects bad usage.
set -u
FEDBFT=${1:?usage: cli_keygen.sh PATH_TO_FEDBFT}
tmp=$(mktemp -d /tmp/fedbft-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/lib.sh"

# --help lists the commands, and each listed command has its own --help
"$FEDBFT" --help > "$tmp/help" 2>&1
check "fedbft --help exits 0" test $? -eq 0
cmds=$(awk '/^Commands:/{on=1; next} on && /^  [a-z]/{print $1}' "$tmp/help")
check "fedbft --help lists commands" test -n "$cmds"
check "keygen is listed" grep -qw keygen <<< "$cmds"
for c in $cmds; do
    out=$("$FEDBFT" "$c" --help 2>&1)
    check "fedbft $c --help exits 0" test $? -eq 0
    check "fedbft $c --help prints usage" grep -q "Usage: fedbft $c" <<< "$out"
done
"$FEDBFT" no-such-command > /dev/null 2>&1
check "unknown command exits 2" test $? -eq 2
"$FEDBFT" > /dev/null 2>&1
check "no command exits 2" test $? -eq 2

# keygen
pk=$("$FEDBFT" keygen --out "$tmp/k1" 2>/dev/null)
check "keygen exits 0" test $? -eq 0
check "keygen prints a 64-hex public key" grep -Eq '^[0-9a-f]{64}$' <<< "$pk"
check "secret key is mode 0600" test "$(stat -c %a "$tmp/k1/node.key")" = 600
check "key dir is mode 0700" test "$(stat -c %a "$tmp/k1")" = 700
check "public key file holds the printed key" grep -qx "$pk" "$tmp/k1/node.pub"
check "keyinfo loads the secret key" test "$("$FEDBFT" keyinfo "$tmp/k1/node.key" 2>/dev/null)" = "$pk"
check "keyinfo reads the public key" test "$("$FEDBFT" keyinfo "$tmp/k1/node.pub" 2>/dev/null)" = "$pk"
chmod 644 "$tmp/k1/node.key"
"$FEDBFT" keyinfo "$tmp/k1/node.key" > /dev/null 2> "$tmp/err"
check "keyinfo refuses a world-readable secret key" test $? -eq 1
check "the refusal says how to fix it" grep -q "chmod 600" "$tmp/err"
chmod 600 "$tmp/k1/node.key"
"$FEDBFT" keygen --out "$tmp/k1" > /dev/null 2> "$tmp/err"
check "keygen refuses to overwrite" test $? -eq 1
check "overwrite refusal explains itself" grep -q "refusing to overwrite" "$tmp/err"
check "refused overwrite kept the key" grep -qx "$pk" "$tmp/k1/node.pub"
pk2=$("$FEDBFT" keygen --out "$tmp/k1" --force 2>/dev/null)
check "keygen --force replaces the key" test -n "$pk2" -a "$pk2" != "$pk"
"$FEDBFT" keygen --out "$tmp/deep/er/k3" > /dev/null 2>&1
check "keygen creates missing parent directories" test -s "$tmp/deep/er/k3/node.key"
"$FEDBFT" keygen > /dev/null 2> "$tmp/err"
check "keygen without --out exits 2" test $? -eq 2
check "missing --out is named" grep -q -- "--out DIR is required" "$tmp/err"
"$FEDBFT" keygen --out "$tmp/k2" --bogus > /dev/null 2>&1
check "keygen with an unknown option exits 2" test $? -eq 2
check "no key written on a usage error" test ! -e "$tmp/k2/node.key"

echo "$fails failure(s)"
test "$fails" -eq 0
