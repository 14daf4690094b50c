#!/usr/bin/env bash
# deploy/k8s/gen.sh - make the keys and configs of a 4-replica fedbft
# StatefulSet: configmap.yaml (cluster.json and node-0..3.json) and
# secrets.yaml (one Secret per replica key, plus client0's key for
# client.yaml).  Then: kubectl apply -k deploy/k8s
#
#   deploy/k8s/gen.sh [--namespace NS] [--out DIR] [--fedbft PATH] [--force]
#
#   --namespace NS  namespace the pods run in (default fedbft); it is part of
#                   each replica's host name in cluster.json, so it must be the
#                   namespace DIR/kustomization.yaml deploys into
#   --out DIR       where to write (default: this script's directory)
#   --fedbft PATH   the fedbft binary (default: $FEDBFT, else fedbft on PATH,
#                   else build/fedbft of this source tree)
#   --force         replace an existing secrets.yaml: new keys make a new
#                   federation, so delete the old pods' volumes (PVCs) too
#
# Every key is made on this machine: whoever runs this holds all of them (a
# test federation; README.md, "Kubernetes", says how parties keep their own).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ns=fedbft
out=$here
fedbft=${FEDBFT:-}
force=0
n=4
sts=fedbft  # StatefulSet and headless Service name (statefulset.yaml, service.yaml)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gen.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --namespace|--out|--fedbft)
            [ $# -ge 2 ] || { echo "gen.sh: $1 needs a value (try --help)" >&2; exit 2; }
            case "$1" in
                --namespace) ns=$2 ;;
                --out) out=$2 ;;
                --fedbft) fedbft=$2 ;;
            esac
            shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gen.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

# A DNS label: what Kubernetes accepts as a namespace name.
[[ $ns =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--namespace '$ns' is not a valid namespace name (lower-case letters, digits, '-')"
[ -d "$out" ] || die "--out $out is not a directory"
if [ -z "$fedbft" ]; then
    if command -v fedbft >/dev/null; then fedbft=$(command -v fedbft)
    elif [ -x "$here/../../build/fedbft" ]; then fedbft=$here/../../build/fedbft
    else die "no fedbft binary: build it (README.md) or pass --fedbft PATH"
    fi
fi
[ -x "$fedbft" ] || die "--fedbft $fedbft is not an executable"
if [ -f "$out/kustomization.yaml" ]; then
    kns=$(sed -n 's/^namespace: *\([^ #]*\).*/\1/p' "$out/kustomization.yaml")
    [ -z "$kns" ] || [ "$kns" = "$ns" ] ||
        die "$out/kustomization.yaml deploys into namespace '$kns' but --namespace is '$ns':" \
            "the replicas would not find each other (set its namespace: line, or pass" \
            "--namespace $kns)"
fi
if [ -e "$out/secrets.yaml" ] && [ "$force" -eq 0 ]; then
    die "$out/secrets.yaml exists: new keys make a new federation. First remove the old" \
        "one (kubectl delete -k $out; kubectl -n $ns delete pvc -l app.kubernetes.io/name=fedbft)," \
        "then run again with --force and kubectl apply -k $out"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077
hosts=""
for ((i = 0; i < n; i++)); do
    hosts+="${hosts:+,}$sts-$i.$sts.$ns.svc.cluster.local"
done
# No model: a ConfigMap holds at most 1 MiB (README.md says how to add one).
"$fedbft" cluster init --nodes "$n" --dir "$tmp/c" --hosts "$hosts" --listen 0.0.0.0 \
    --model none >"$tmp/init.out" 2>&1 || { cat "$tmp/init.out" >&2; die "cluster init failed"; }

# node.json as the pod sees it: the ConfigMap at /etc/fedbft/config, the key
# the init container installs at /run/fedbft/key, the PVC at /var/lib/fedbft.
set_field() { # FILE FIELD OLD_JSON_VALUE NEW_JSON_VALUE
    local f=$1 key=$2 old=$3 new=$4
    sed -i "s|^  \"$key\": $old,\$|  \"$key\": $new,|" "$f"
    grep -q "^  \"$key\": $new,\$" "$f" ||
        die "cannot set \"$key\" in $f (the format of 'fedbft cluster init' changed?)"
}
for ((i = 0; i < n; i++)); do
    f=$tmp/c/node$i/node.json
    set_field "$f" cluster '"[^"]*"' '"/etc/fedbft/config/cluster.json"'
    set_field "$f" key '"[^"]*"' '"/run/fedbft/key/node.key"'
    set_field "$f" data_dir '"[^"]*"' '"/var/lib/fedbft"'
    set_field "$f" fault_injection true false
done

indent() { sed 's/^/    /' "$1"; }
label="    app.kubernetes.io/name: fedbft"
{
    echo "# Made by deploy/k8s/gen.sh for namespace $ns: the federation (cluster.json)"
    echo "# and each replica's node.json (pod fedbft-<i> reads node-<i>.json)."
    echo "apiVersion: v1"
    echo "kind: ConfigMap"
    echo "metadata:"
    echo "  name: fedbft-config"
    echo "  labels:"
    echo "$label"
    echo "data:"
    echo "  cluster.json: |"
    indent "$tmp/c/cluster.json"
    for ((i = 0; i < n; i++)); do
        echo "  node-$i.json: |"
        indent "$tmp/c/node$i/node.json"
    done
} >"$tmp/configmap.yaml"

secret() { # NAME KEYFILE WHAT
    echo "# $3"
    echo "apiVersion: v1"
    echo "kind: Secret"
    echo "metadata:"
    echo "  name: $1"
    echo "  labels:"
    echo "$label"
    echo "type: Opaque"
    echo "data:"
    echo "  node.key: $(base64 -w0 "$2")"
}
{
    echo "# Made by deploy/k8s/gen.sh for namespace $ns: secret keys.  Do not commit."
    for ((i = 0; i < n; i++)); do
        secret "fedbft-node-$i" "$tmp/c/node$i/node.key" "replica $i ($sts-$i)"
        echo "---"
    done
    secret fedbft-client-0 "$tmp/c/clients/client0/node.key" \
        "client 1000 (client0), used by client.yaml"
} >"$tmp/secrets.yaml"

chmod 0644 "$tmp/configmap.yaml"
mv "$tmp/configmap.yaml" "$out/configmap.yaml"
mv "$tmp/secrets.yaml" "$out/secrets.yaml"
echo "gen.sh: wrote $out/configmap.yaml and $out/secrets.yaml (mode 0600) for namespace $ns"
echo "gen.sh: replicas $hosts"
