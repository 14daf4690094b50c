# lib.sh - a 4-node federation across Linux network namespaces, with emulated
# WAN links, for the multi-host tests (source it; it sources
# tests/integration/lib.sh for check, wait_for, node_ctl and the rest).
#
# Topology (every name unique to this run; the root namespace's interfaces
# are never touched):
#   <run>-sw      the "switch": a bridge br0 and one veth port per host
#   <run>-n<i>    node i, eth0 = $NET.<i+1>/24 (i = 0..3)
#   <run>-cl      the clients, eth0 = $NET.100/24
# Each host's outgoing packets are shaped on its eth0, so a packet from A to B
# sees A's delay, jitter and loss once:
#   tc netem        where `tc qdisc add ... netem` works (sch_netem), else
#   fb_netem        tests/tools/fb_netem bound to an iptables NFQUEUE rule in
#                   the host's OUTPUT chain (libnetfilter_queue).
# Partitions are iptables DROP rules (both directions) in the namespaces of
# the two sides, with either path; healing removes them.
#
#   netns_init FEDBFT FB_NETEM   set the globals; skip (exit 77) unless this
#                                can run here: root, `ip netns add`, iptables,
#                                and tc netem or NFQUEUE + fb_netem
#   netns_links DELAY JITTER LOSS  shape every host's link (ms, ms, percent)
#   netns_cluster_init [ARGS...]   `cluster init` in $dir, replica i on $NET.<i+1>
#   netns_nodes_start              start node i in its namespace, wait until
#                                  each is ready (`fedbft probe`: /ready)
#   netns_nodes_stop               SIGTERM the nodes, wait for them
#   netns_client CMD...            run CMD in the client namespace
#   netns_shaper_cpu               CPU seconds used by the fb_netem processes
#   netns_cut A B                  drop every packet between hosts A and B
#   netns_heal                     remove every cut
#   netns_cleanup                  the EXIT trap: stop what this run started,
#                                  delete its namespaces (and with them every
#                                  veth, bridge and iptables rule)
# The caller sets $tmp (its temporary directory) and $dir (the cluster
# directory, under $tmp) before netns_init, and traps EXIT to its own cleanup,
# which calls netns_cleanup.
. "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"

NETNS_PORT=7000 # every replica on its own address: the same ports everywhere
netns_run=      # the namespace prefix, set by netns_init
netns_made=()   # namespaces this run created
netns_pids=()   # background processes this run started (nodes, fb_netem)
netns_cuts=()   # "NS CHAIN RULE..." for each DROP rule in place
netns_links_path=

netns_skip() {
    echo "skip $1"
    netns_cleanup
    exit 77
}

netns_ns() { # netns_ns HOST: the namespace of node HOST (0..3) or "cl"
    if [ "$1" = cl ]; then echo "$netns_run-cl"; else echo "$netns_run-n$1"; fi
}
netns_addr() { # netns_addr HOST: its address
    if [ "$1" = cl ]; then echo "$NET.100"; else echo "$NET.$(($1 + 1))"; fi
}
netns_client() { ip netns exec "$(netns_ns cl)" "$@"; }

# ---- setup

netns_init() {
    FEDBFT=$1
    FB_NETEM=${2:-}
    netns_run=fb$$x$((RANDOM % 1000))
    NET=10.$((200 + $$ % 50)).$((RANDOM % 250))
    trap 'exit 143' TERM
    trap 'exit 130' INT
    [ "$(id -u)" -eq 0 ] ||
        netns_skip "multi-host tests: they run as root (ip netns, veth, iptables), and this is uid $(id -u)"
    command -v ip > /dev/null || netns_skip "multi-host tests: no 'ip' command (iproute2)"
    local err
    if ! err=$(ip netns add "$netns_run-sw" 2>&1); then
        netns_skip "multi-host tests: 'ip netns add' fails here because: $err"
    fi
    netns_made+=("$netns_run-sw")
    command -v iptables > /dev/null ||
        netns_skip "multi-host tests: partitions need iptables, which is not installed"
    ip -n "$netns_run-sw" link set lo up
    ip -n "$netns_run-sw" link add br0 type bridge || netns_skip "multi-host tests: cannot make a bridge"
    ip -n "$netns_run-sw" link set br0 up
    local h
    for h in 0 1 2 3 cl; do netns_add_host "$h" || return 1; done
    netns_pick_links
}

netns_add_host() { # netns_add_host HOST: its namespace, veth into the switch, address
    local ns port
    ns=$(netns_ns "$1")
    port=p$1
    ip netns add "$ns" || return 1
    netns_made+=("$ns")
    ip -n "$netns_run-sw" link add "$port" type veth peer name eth0 netns "$ns" &&
        ip -n "$netns_run-sw" link set "$port" master br0 up &&
        ip -n "$ns" link set lo up &&
        ip -n "$ns" addr add "$(netns_addr "$1")/24" dev eth0 &&
        ip -n "$ns" link set eth0 up
}

# Which link emulator: FEDBFT_NETNS_LINKS=netem|fb_netem forces one (a test
# of the other path on a kernel that has both); by default tc netem if the
# kernel has sch_netem, else fb_netem.  Both are probed on a spare veth pair
# in the switch namespace.
netns_pick_links() {
    local sw=$netns_run-sw want=${FEDBFT_NETNS_LINKS:-auto} why_netem why_nfq
    ip -n "$sw" link add probe0 type veth peer name probe1 && ip -n "$sw" link set probe0 up
    if [ "$want" != fb_netem ]; then
        if why_netem=$(tc -n "$sw" qdisc add dev probe0 root netem delay 1ms 2>&1); then
            netns_links_path=netem
        else
            why_netem="tc netem: ${why_netem:-failed}"
        fi
    fi
    if [ -z "$netns_links_path" ] && [ "$want" != netem ]; then
        why_nfq=$(netns_probe_nfqueue "$sw") && netns_links_path=fb_netem
    fi
    ip -n "$sw" link del probe0 2> /dev/null
    case $netns_links_path in
    netem) echo "     links: tc netem" ;;
    fb_netem) echo "     links: fb_netem over NFQUEUE (this kernel has no sch_netem)" ;;
    *) netns_skip "multi-host tests: no link emulator, because ${why_netem:-tc netem not tried (FEDBFT_NETNS_LINKS=$want)}; and ${why_nfq:-fb_netem not tried (FEDBFT_NETNS_LINKS=$want)}" ;;
    esac
}

netns_probe_nfqueue() { # netns_probe_nfqueue NS: can fb_netem shape here? (why not on stdout)
    local ns=$1 log=$tmp/fb_netem-probe.log pid ok=1 deadline
    if [ -z "$FB_NETEM" ] || [ ! -x "$FB_NETEM" ]; then
        echo "fb_netem is not built (it needs libnetfilter-queue-dev)"; return 1
    fi
    ip netns exec "$ns" iptables -A OUTPUT -o probe0 -j NFQUEUE --queue-num 0 --queue-bypass 2> "$log" ||
        { echo "iptables has no NFQUEUE target: $(head -1 "$log")"; return 1; }
    ip netns exec "$ns" "$FB_NETEM" --queue 0 > "$log" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 5))
    while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2> /dev/null; do
        grep -q ' ready' "$log" && { ok=0; break; }
        sleep 0.05
    done
    kill "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    [ $ok -eq 0 ] || echo "fb_netem cannot bind a queue: $(grep -v ready "$log" | head -1)"
    return $ok
}

# netns_links DELAY_MS JITTER_MS LOSS_PCT: shape every host's outgoing link.
netns_links() {
    local delay=$1 jitter=$2 loss=$3 h ns
    for h in 0 1 2 3 cl; do
        ns=$(netns_ns "$h")
        if [ "$netns_links_path" = netem ]; then
            # A large limit: netem's default (1000 packets) would add tail drops.
            tc -n "$ns" qdisc replace dev eth0 root netem limit 100000 delay "${delay}ms" \
                "${jitter}ms" loss "${loss}%" || return 1
        else
            netns_start_fb_netem "$ns" "$delay" "$jitter" "$loss" || return 1
        fi
    done
    echo "     every link: ${delay} ms +- ${jitter} ms one way, ${loss}% loss ($netns_links_path)"
}

netns_start_fb_netem() { # NS DELAY JITTER LOSS: the rule, then the shaper; wait until bound
    local ns=$1 log=$tmp/fb_netem-$1.log pid deadline
    ip netns exec "$ns" iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass || return 1
    ip netns exec "$ns" "$FB_NETEM" --queue 0 --delay "$2" --jitter "$3" --loss "$4" \
        --seed "${FEDBFT_NETNS_SEED:-$RANDOM}" > "$log" 2>&1 &
    pid=$!
    netns_pids+=("$pid")
    deadline=$((SECONDS + 10))
    until grep -q ' ready' "$log"; do
        if ! kill -0 "$pid" 2> /dev/null || [ $SECONDS -ge $deadline ]; then
            echo "FAIL fb_netem in $ns did not start:"; sed 's/^/     /' "$log"; return 1
        fi
        sleep 0.05
    done
}

# netns_shaper_cpu: CPU seconds the running fb_netem processes have used
# (user + system), "0" with tc netem (its cost is in the kernel, uncounted).
netns_shaper_cpu() {
    local pid ticks=0 t
    for pid in "${netns_pids[@]}"; do
        grep -q fb_netem "/proc/$pid/cmdline" 2> /dev/null || continue
        t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2> /dev/null) && ticks=$((ticks + t))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}

# ---- partitions

netns_drop() { # netns_drop NS CHAIN MATCH ADDR: insert a DROP ahead of the NFQUEUE rule
    ip netns exec "$1" iptables -I "$2" 1 "$3" "$4" -j DROP && netns_cuts+=("$1 $2 $3 $4")
}
netns_cut() { # netns_cut A B: no packet between hosts A and B, either way
    local a b
    a=$(netns_ns "$1")
    b=$(netns_ns "$2")
    netns_drop "$a" OUTPUT -d "$(netns_addr "$2")" && netns_drop "$a" INPUT -s "$(netns_addr "$2")" &&
        netns_drop "$b" OUTPUT -d "$(netns_addr "$1")" && netns_drop "$b" INPUT -s "$(netns_addr "$1")"
}
netns_heal() {
    local c rc=0 ns chain match addr
    for c in "${netns_cuts[@]}"; do
        read -r ns chain match addr <<< "$c"
        ip netns exec "$ns" iptables -D "$chain" "$match" "$addr" -j DROP || rc=1
    done
    netns_cuts=()
    return $rc
}

# ---- the cluster

# netns_cluster_init [INIT_ARGS...]: a 4-node cluster in $dir, replica i on
# host $NET.<i+1>, every replica on ports $NETNS_PORT, +100 (clients), +200
# (HTTP).
netns_cluster_init() {
    local hosts
    hosts=$(netns_addr 0),$(netns_addr 1),$(netns_addr 2),$(netns_addr 3)
    "$FEDBFT" cluster init --nodes 4 --dir "$dir" --hosts "$hosts" --base-port "$NETNS_PORT" \
        --force "$@" > "$tmp/init.out" 2>&1 || { echo "FAIL cluster init"; cat "$tmp/init.out"; return 1; }
}

node_ready() { # node I is connected to a quorum, in an active view (its /ready)
    ip netns exec "$(netns_ns "$1")" "$FEDBFT" probe --config "$dir/node$1/node.json" \
        --timeout-ms 1000 > /dev/null 2>&1
}

netns_nodes_start() { # start every node in its namespace; wait until each is ready
    local i pid deadline=$((SECONDS + 30))
    for i in 0 1 2 3; do
        ip netns exec "$(netns_ns "$i")" "$FEDBFT" run --config "$dir/node$i/node.json" \
            >> "$dir/node$i/node.log" 2>&1 &
        pid=$!
        netns_pids+=("$pid")
        echo "$pid" > "$dir/node$i/node.pid"
    done
    for i in 0 1 2 3; do
        until node_ready "$i"; do
            if ! kill -0 "$(node_pid "$i")" 2> /dev/null || [ $SECONDS -ge $deadline ]; then
                echo "FAIL node $i did not come up in $(netns_ns "$i") within 30 s:"
                tail -n 20 "$dir/node$i/node.log" | sed 's/^/     /'
                return 1
            fi
            sleep 0.1
        done
    done
}

netns_stop_pid() { # netns_stop_pid PID SECONDS: SIGTERM, SIGKILL after SECONDS
    local deadline=$((SECONDS + $2))
    kill "$1" 2> /dev/null || return 0
    while kill -0 "$1" 2> /dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    kill -9 "$1" 2> /dev/null
    wait "$1" 2> /dev/null
    return 0
}

netns_forget() { # netns_forget PID: a stopped process leaves the list (its pid may be reused)
    local p keep=()
    for p in "${netns_pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    netns_pids=("${keep[@]}")
}

netns_nodes_stop() {
    local i pid
    for i in 0 1 2 3; do
        pid=$(node_pid "$i") && [ -n "$pid" ] && kill "$pid" 2> /dev/null
    done
    for i in 0 1 2 3; do
        pid=$(node_pid "$i") && [ -n "$pid" ] && netns_stop_pid "$pid" 15 && netns_forget "$pid"
        rm -f "$dir/node$i/node.pid"
    done
}

# ---- teardown

netns_cleanup() {
    local pid ns
    for pid in "${netns_pids[@]}"; do kill "$pid" 2> /dev/null; done
    for pid in "${netns_pids[@]}"; do netns_stop_pid "$pid" 10; done
    netns_pids=()
    # Anything else still in our namespaces (a client we lost track of) is ours.
    for ns in "${netns_made[@]}"; do
        for pid in $(ip netns pids "$ns" 2> /dev/null); do kill -9 "$pid" 2> /dev/null; done
    done
    for ns in "${netns_made[@]}"; do ip netns del "$ns" 2> /dev/null; done
    netns_made=()
}
