#!/usr/bin/env bash
# deploy/setup.sh - install the Debian 12 packages fedbft needs to build, test
# and run.  Non-interactive and idempotent: when everything is present it only
# checks (well under a second) and changes nothing.
#
#   deploy/setup.sh           build + test dependencies
#   deploy/setup.sh --fuzz    also clang and its fuzzer runtime (FEDBFT_FUZZ=ON)
set -euo pipefail

pkgs=(
    build-essential cmake pkg-config     # compiler (gcc ships ASan/UBSan), build
    libsodium-dev                        # Ed25519, BLAKE2b, X25519, AEAD
    libuv1-dev                           # event loop, TCP, timers
    libprotobuf-c-dev protobuf-c-compiler # wire format + protoc-c
    libxxhash-dev                        # XXH3-128 cache keys
    libsqlite3-dev                       # log, checkpoints, replicated state
    libjansson-dev                       # JSON: config, admin socket, HTTP API
    libhttp-parser-dev                   # HTTP/1.1 server
    libcmocka-dev                        # unit tests
    python3 curl                         # integration tests: JSON checks, HTTP API
    python3-yaml                         # deploy test: compose/Kubernetes YAML parses
    iproute2 iptables                    # multi-host tests: namespaces, veth, partitions
    libnetfilter-queue-dev               # fb_netem: WAN delay/loss where tc netem is missing
)
case "${1:-}" in
    --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    "") ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#pkgs[@]} packages present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
