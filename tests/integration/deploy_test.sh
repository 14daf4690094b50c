#!/usr/bin/env bash
# deploy_test.sh FEDBFT - the deployment files, as far as a host without a
# container engine or a Kubernetes cluster can check them:
#   - the Dockerfile's build stage (deploy/docker/build-stage.sh) run here into
#     a temporary DESTDIR, and the tree it installs: binary, man page (true to
#     every command's usage), systemd unit (systemd-analyze verify and its
#     offline security score), sysusers.d entry, example node.json;
#   - every shared library the installed binary needs comes from a package the
#     image's runtime stage installs (ldd, dpkg -S), and no package is extra;
#   - four nodes run from the example node.json: /health and /ready answer as
#     the probes expect, the Dockerfile's HEALTHCHECK command passes once a
#     quorum is up and fails before, SIGTERM stops each with exit 0;
#   - docker-compose.yml's init step run here (twice: the second keeps the
#     keys), and gen.sh for Kubernetes with its init container's script;
#   - every YAML file parses, `kubectl kustomize` builds (when kubectl is
#     here), and the ports, paths, probe paths, user ids and host names in the
#     Dockerfile, Compose file and manifests agree with the generated
#     node.json/cluster.json files and with what the node serves.
# The build directory of the stage persists beside FEDBFT (deploy-stage/), so
# a second run builds incrementally.  Node ports: 1100..1999.
set -u
FEDBFT=$(realpath "${1:?usage: deploy_test.sh PATH_TO_FEDBFT}")
src=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d /tmp/fedbft-deploy-XXXXXX)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    if [ "${fails:-1}" -ne 0 ]; then
        for f in "$tmp"/run/node*.log; do
            [ -f "$f" ] && { echo "--- $(basename "$f") (tail)"; tail -n 10 "$f"; }
        done
    fi
    if [ "${fails:-1}" -ne 0 ] && [ -n "${FEDBFT_KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
. "$(dirname "$0")/lib.sh"
start=$SECONDS

# A Python with the yaml module (Debian: python3-yaml).
py=""
for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import yaml' 2>/dev/null; then py=$p; break; fi
done
if [ -z "$py" ]; then
    echo "FAIL no python3 with the yaml module: install python3-yaml (apt-get install python3-yaml)"
    exit 1
fi

# The checks that read the files, in Python: `check.py MODE ARGS...`.
cat > "$tmp/check.py" <<'PYEOF'
import base64, json, os, re, shlex, subprocess, sys
import yaml

SRC = os.environ["SRC"]
fails = 0
def check(what, cond, detail=""):
    global fails
    print(("ok   " if cond else "FAIL ") + what + ("" if cond or not detail else ": " + str(detail)))
    if not cond:
        fails += 1

def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

def dockerfile(path):
    """[(stage, INSTRUCTION, args)] with continuations joined and comments dropped."""
    out, stage, cur = [], -1, ""
    for line in open(path):
        s = line.rstrip("\n")
        if not cur and (not s.strip() or s.lstrip().startswith("#")):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        ins, _, args = cur.strip().partition(" ")
        cur = ""
        if ins.upper() == "FROM":
            stage += 1
        out.append((stage, ins.upper(), args.strip()))
    return out

def exec_form(args):
    """The JSON array of an exec-form instruction (after any --options)."""
    m = re.search(r"\[.*\]", args)
    return json.loads(m.group(0)) if m else None

def runtime_packages(df):
    last = max(s for s, _, _ in df)
    pkgs = []
    for s, ins, args in df:
        if s == last and ins == "RUN" and "apt-get install" in args:
            seg = args.split("apt-get install", 1)[1].split("&&")[0]
            pkgs += [w for w in seg.split() if not w.startswith("-")]
    return pkgs

def healthcheck(df):
    last = max(s for s, _, _ in df)
    for s, ins, args in df:
        if s == last and ins == "HEALTHCHECK":
            return exec_form(args.split("CMD", 1)[1])
    return None

def opt(argv, name):
    return argv[argv.index(name) + 1] if argv and name in argv else None

def facts():
    df = dockerfile(os.path.join(SRC, "Dockerfile"))
    last = max(s for s, _, _ in df)
    rt = [(i, a) for s, i, a in df if s == last]
    get = lambda ins: [a for i, a in rt if i == ins]
    return df, rt, get

# ---- modes that hand something to the shell
def mode_packages():
    print("\n".join(runtime_packages(dockerfile(os.path.join(SRC, "Dockerfile")))))

def mode_healthcheck():
    print("\n".join(healthcheck(dockerfile(os.path.join(SRC, "Dockerfile")))))

def mode_compose_init():
    svc = load_yaml(os.path.join(SRC, "docker-compose.yml"))[0]["services"]["init"]
    script = svc["command"][0] if isinstance(svc["command"], list) else svc["command"]
    print(script.replace("$$", "$"), end="")

def mode_k8s_scripts(outdir):
    sts = load_yaml(os.path.join(SRC, "deploy/k8s/statefulset.yaml"))[0]
    pod = sts["spec"]["template"]["spec"]
    with open(os.path.join(outdir, "init.sh"), "w") as f:
        f.write(pod["initContainers"][0]["command"][-1])
    with open(os.path.join(outdir, "main.sh"), "w") as f:
        f.write(pod["containers"][0]["command"][-1])

def mode_example_node(example, cluster_dir, i, base, out):
    i, base = int(i), int(base)
    """The installed example node.json made to run here as replica i."""
    j = json.load(open(example))
    j.update(id=i, cluster=f"{cluster_dir}/cluster.json", key=f"{cluster_dir}/node{i}/node.key",
             data_dir=f"{cluster_dir}/data{i}", listen=f"127.0.0.{i + 1}", http_port=base + 200)
    json.dump(j, open(out, "w"), indent=2)

# ---- the installed example config
def mode_example(example):
    j = json.load(open(example))
    want = {"cluster": "/etc/fedbft/cluster.json", "key": "/etc/fedbft/node.key",
            "data_dir": "/var/lib/fedbft", "listen": "0.0.0.0", "durability": "fsync",
            "fault_injection": False}
    check("example node.json: " + ", ".join(f"{k} {v}" for k, v in want.items()),
          all(j.get(k) == v for k, v in want.items()), {k: j.get(k) for k in want})
    check("example node.json: http_port 7200 (the image's HTTP port)", j.get("http_port") == 7200)
    unit = open(os.path.join(SRC, "deploy/systemd/fedbft.service.in")).read()
    sd = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    check("the unit runs /etc/fedbft/node.json, the ConfigurationDirectory",
          "--config /etc/fedbft/node.json" in sd.get("ExecStart", "")
          and sd.get("ConfigurationDirectory") == "fedbft")
    check("example data_dir is the unit's StateDirectory (the admin socket lives there)",
          j["data_dir"] == "/var/lib/" + sd.get("StateDirectory", "?"))
    check("example key and cluster are in the ConfigurationDirectory",
          j["key"].startswith("/etc/fedbft/") and j["cluster"].startswith("/etc/fedbft/"))

# ---- Dockerfile
def mode_dockerfile():
    df, rt, get = facts()
    froms = [a for _, i, a in df if i == "FROM"]
    check("Dockerfile: two stages, both debian:bookworm-slim",
          len(froms) == 2 and all(f.split()[0] == "debian:bookworm-slim" for f in froms), froms)
    build_runs = " ".join(a for s, i, a in df if s == 0 and i == "RUN")
    check("Dockerfile: the build stage runs deploy/docker/build-stage.sh into DESTDIR=/out",
          "build-stage.sh" in build_runs and "DESTDIR=/out" in build_runs)
    copies = get("COPY")
    check("Dockerfile: the runtime stage copies /out/usr/bin/fedbft from the build stage",
          any(c.startswith("--from=build /out/usr/bin/fedbft ") for c in copies), copies)
    apt = " ".join(get("RUN"))
    check("Dockerfile: runtime apt-get uses --no-install-recommends and cleans its lists",
          "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists" in apt)
    user = get("USER")
    check("Dockerfile: runs as uid:gid 10001:10001 (numeric, so runAsNonRoot can check it)",
          user == ["10001:10001"], user)
    check("Dockerfile: the user is made with uid and gid 10001",
          "--uid 10001" in apt and "--gid 10001" in apt)
    vol = exec_form(" ".join(get("VOLUME")))
    check("Dockerfile: VOLUME /var/lib/fedbft", vol == ["/var/lib/fedbft"], vol)
    expose = sorted(int(p) for a in get("EXPOSE") for p in a.split())
    check("Dockerfile: EXPOSE 7000 7100 7200", expose == [7000, 7100, 7200], expose)
    hc = healthcheck(df)
    check("Dockerfile: HEALTHCHECK is `fedbft probe --path /ready` on 127.0.0.1:7200",
          hc and hc[:2] == ["fedbft", "probe"] and opt(hc, "--path") == "/ready"
          and opt(hc, "--port") == "7200" and opt(hc, "--host") == "127.0.0.1", hc)
    check("Dockerfile: ENTRYPOINT fedbft, CMD run --config /etc/fedbft/node.json",
          exec_form(" ".join(get("ENTRYPOINT"))) == ["fedbft"]
          and exec_form(" ".join(get("CMD"))) == ["run", "--config", "/etc/fedbft/node.json"])
    ign = open(os.path.join(SRC, ".dockerignore")).read().split()
    check(".dockerignore keeps .git, build trees and the generated k8s secrets out",
          all(p in ign for p in (".git", "build*/", "deploy/k8s/secrets.yaml")))

# ---- docker-compose.yml, with the configs its init step made in `gen`
def mode_compose(gen):
    df, rt, get = facts()
    hc = healthcheck(df)
    c = load_yaml(os.path.join(SRC, "docker-compose.yml"))[0]
    s = c["services"]
    nodes = [f"node{i}" for i in range(4)]
    check("compose: services init, node0..node3, client",
          set(s) == {"init", "client", *nodes}, sorted(s))
    init = s["init"]
    mount = lambda svc, vol: next((v.split(":")[1] for v in svc.get("volumes", [])
                                   if v.split(":")[0] == vol), None)
    cfg_dir = mount(init, "config")
    check("compose init: writes the config volume at FEDBFT_DIR",
          cfg_dir and init["environment"]["FEDBFT_DIR"] == cfg_dir, cfg_dir)
    script = (init["command"][0] if isinstance(init["command"], list) else init["command"])
    check("compose init: cluster init --hosts node0,node1,node2,node3 --listen 0.0.0.0",
          "--hosts node0,node1,node2,node3" in script and "--listen 0.0.0.0" in script)
    cl = json.load(open(f"{gen}/cluster.json"))
    check("compose: cluster.json names the node services as hosts",
          [r["host"] for r in cl["replicas"]] == nodes)
    check("compose: every replica uses ports 7000/7100 (EXPOSEd)",
          all((r["port"], r["client_port"]) == (7000, 7100) for r in cl["replicas"]))
    datas = set()
    for i, n in enumerate(nodes):
        v = s[n]
        d = v.get("depends_on", {})
        check(f"compose {n}: after init completed successfully",
              d.get("init", {}).get("condition") == "service_completed_successfully", d)
        check(f"compose {n}: a restart policy and a stop grace period",
              v.get("restart") in ("always", "unless-stopped", "on-failure")
              and "stop_grace_period" in v)
        cmd = v.get("command")
        conf = cmd[2] if cmd and cmd[:2] == ["run", "--config"] else None
        local = conf and conf.startswith(cfg_dir + "/") and gen + conf[len(cfg_dir):]
        ok = bool(local) and os.path.isfile(local)
        check(f"compose {n}: runs a node.json the init step made", ok, cmd)
        if not ok:
            continue
        j = json.load(open(local))
        data = mount(v, f"data{i}")
        datas.add(data and f"data{i}")
        check(f"compose {n}: id {i}, data_dir = its own volume = the image's VOLUME",
              j["id"] == i and data == j["data_dir"] == "/var/lib/fedbft", (j["id"], data, j["data_dir"]))
        check(f"compose {n}: listen 0.0.0.0, http_port 7200, no fault injection",
              j.get("listen") == "0.0.0.0" and j.get("http_port") == 7200
              and j.get("fault_injection") is False)
        key = os.path.normpath(os.path.join(os.path.dirname(local), j["key"]))
        check(f"compose {n}: its key file is there, mode 0600",
              os.path.isfile(key) and os.stat(key).st_mode & 0o777 == 0o600)
        check(f"compose {n}: config volume read-only", f"config:{cfg_dir}:ro" in v["volumes"])
        hct = v.get("healthcheck", {}).get("test", [])
        check(f"compose {n}: its healthcheck is the Dockerfile's", hct[1:] == hc, hct)
        check(f"compose {n}: on the network the client uses",
              v.get("networks") == s["client"].get("networks") == init.get("networks"))
    check("compose: each node has its own data volume", len(datas) == 4 and None not in datas)
    cli = s["client"]
    ep = cli.get("entrypoint", [])
    check("compose client: under a profile", "profiles" in cli and cli["profiles"])
    paths = [opt(ep, "--cluster"), opt(ep, "--key")]
    check("compose client: its --cluster and --key are files the init step made",
          all(p and p.startswith(cfg_dir + "/") and os.path.isfile(gen + p[len(cfg_dir):])
              for p in paths), paths)
    check("compose: one published HTTP port per node, each to 7200",
          sorted(p.rsplit(":", 1)[1] for n in nodes for p in s[n].get("ports", [])) == ["7200"] * 4)

# ---- Kubernetes, with the files gen.sh wrote into `out` and its namespace
def mode_k8s(out, fedbft):
    df, rt, get = facts()
    k = os.path.join(SRC, "deploy/k8s")
    kust = load_yaml(f"{k}/kustomization.yaml")[0]
    ns = kust.get("namespace")
    res = kust.get("resources", [])
    check("kustomization: every manifest gen.sh and the repo hold",
          set(res) == {"service.yaml", "statefulset.yaml", "pdb.yaml", "configmap.yaml",
                       "secrets.yaml"}, res)
    sts = load_yaml(f"{k}/statefulset.yaml")[0]
    svc = load_yaml(f"{k}/service.yaml")[0]
    pdb = load_yaml(f"{k}/pdb.yaml")[0]
    cm = load_yaml(f"{out}/configmap.yaml")[0]
    secrets = {d["metadata"]["name"]: d for d in load_yaml(f"{out}/secrets.yaml")}
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    main = pod["containers"][0]
    init = pod["initContainers"][0]
    n = spec["replicas"]
    f = (n - 1) // 3
    check("statefulset: podManagementPolicy Parallel", spec.get("podManagementPolicy") == "Parallel")
    check("statefulset: serviceName is the headless Service",
          spec["serviceName"] == svc["metadata"]["name"] and svc["spec"].get("clusterIP") == "None")
    check("service: publishNotReadyAddresses (peers meet before they are ready)",
          svc["spec"].get("publishNotReadyAddresses") is True)
    labels = spec["template"]["metadata"]["labels"]
    for name, sel in (("statefulset", spec["selector"]["matchLabels"]),
                      ("service", svc["spec"]["selector"]), ("pdb", pdb["spec"]["selector"]["matchLabels"])):
        check(f"{name}: selector matches the pod labels",
              all(labels.get(a) == b for a, b in sel.items()), sel)
    check(f"pdb: minAvailable = 2f+1 = {2 * f + 1} for n = {n}", pdb["spec"].get("minAvailable") == 2 * f + 1)
    cl = json.loads(cm["data"]["cluster.json"])
    check(f"configmap: cluster.json has the {n} replicas of the StatefulSet", len(cl["replicas"]) == n)
    want_hosts = [f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc.cluster.local"
                  for i in range(n)]
    check("configmap: replica i's host is pod <sts>-i of the Service in the kustomization's namespace",
          [r["host"] for r in cl["replicas"]] == want_hosts, [r["host"] for r in cl["replicas"]])
    cports = {p["name"]: p["containerPort"] for p in main["ports"]}
    sports = {p["name"]: (p["port"], p.get("targetPort")) for p in svc["spec"]["ports"]}
    check("statefulset ports replica/client/http = 7000/7100/7200 = the Dockerfile's EXPOSE",
          [cports.get(x) for x in ("replica", "client", "http")] == [7000, 7100, 7200]
          and sorted(cports.values()) == sorted(int(p) for a in get("EXPOSE") for p in a.split()))
    check("service ports are the container ports, by name",
          all(sports.get(nm) == (pt, nm) for nm, pt in cports.items()), sports)
    check("cluster.json: every replica's port/client_port are the container's",
          all((r["port"], r["client_port"]) == (cports["replica"], cports["client"]) for r in cl["replicas"]))
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    imounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    check("statefulset: the config volume is the generated ConfigMap",
          vols["config"]["configMap"]["name"] == cm["metadata"]["name"])
    claim = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    check("statefulset: the data volume is a volumeClaimTemplate", "data" in claim and "data" not in vols)
    check("statefulset: the key volume is an in-memory emptyDir shared with the init container",
          vols["key"].get("emptyDir", {}).get("medium") == "Memory" and imounts.get("key") == mounts["key"])
    check("statefulset: only the init container mounts the Secrets",
          "secrets" in imounts and "secrets" not in mounts)
    srcs = [s["secret"] for s in vols["secrets"]["projected"]["sources"]]
    check(f"statefulset: one Secret per replica, fedbft-node-0..{n - 1}, projected as node-<i>.key",
          [(s["name"], s["items"][0]["path"]) for s in srcs]
          == [(f"fedbft-node-{i}", f"node-{i}.key") for i in range(n)])
    check("secrets.yaml: exactly those Secrets, plus fedbft-client-0",
          sorted(secrets) == sorted([f"fedbft-node-{i}" for i in range(n)] + ["fedbft-client-0"]), sorted(secrets))
    for i in range(n):
        j = json.loads(cm["data"].get(f"node-{i}.json", "{}"))
        ok = (j.get("id") == i and j.get("cluster") == mounts["config"] + "/cluster.json"
              and j.get("key") == mounts["key"] + "/node.key" and j.get("data_dir") == mounts["data"]
              and j.get("listen") == "0.0.0.0" and j.get("http_port") == cports["http"]
              and j.get("fault_injection") is False)
        check(f"configmap node-{i}.json: id {i}, paths are the pod's mounts, listen 0.0.0.0, http_port, "
              "no fault injection", ok, j)
        key = base64.b64decode(secrets[f"fedbft-node-{i}"]["data"]["node.key"])
        path = os.path.join(out, f"key{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, key)
        os.close(fd)
        r = subprocess.run([fedbft, "keyinfo", path], capture_output=True, text=True)
        check(f"secret fedbft-node-{i}: a valid key whose public key cluster.json lists for replica {i}",
              r.returncode == 0 and cl["replicas"][i]["public_key"] in r.stdout, r.stdout + r.stderr)
    key = base64.b64decode(secrets["fedbft-client-0"]["data"]["node.key"])
    path = os.path.join(out, "client0")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, key)
    os.close(fd)
    r = subprocess.run([fedbft, "keyinfo", path], capture_output=True, text=True)
    check("secret fedbft-client-0: a client key cluster.json lists",
          r.returncode == 0 and any(c["public_key"] in r.stdout for c in cl["clients"]))
    probes = {p: main.get(p, {}).get("httpGet", {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    check("statefulset probes: readiness GET /ready, liveness and startup GET /health, on port http",
          probes["readinessProbe"].get("path") == "/ready" and probes["livenessProbe"].get("path") == "/health"
          and probes["startupProbe"].get("path") == "/health"
          and all(p.get("port") == "http" for p in probes.values()), probes)
    psc = pod["securityContext"]
    uid = int(get("USER")[0].split(":")[0])
    check("statefulset: runAsNonRoot, runAsUser = fsGroup = the image's uid",
          psc.get("runAsNonRoot") is True and psc.get("runAsUser") == psc.get("fsGroup") == uid, psc)
    for c in (main, init):
        sc = c.get("securityContext", {})
        check(f"container {c['name']}: read-only root filesystem, no privilege escalation, drops ALL",
              sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
              and sc.get("capabilities", {}).get("drop") == ["ALL"], sc)
    check("statefulset: a writable /tmp (the root filesystem is read-only)", mounts.get("tmp") == "/tmp")
    client = load_yaml(f"{k}/client.yaml")[0]
    cvols = {v["name"]: v for v in client["spec"]["volumes"]}
    check("client.yaml: client0's Secret and the ConfigMap",
          cvols["secret"]["secret"]["secretName"] == "fedbft-client-0"
          and cvols["config"]["configMap"]["name"] == cm["metadata"]["name"])

# ---- what a traced node did, against the unit's SystemCallFilter and
# RestrictAddressFamilies
def expand_filter(group, seen=None):
    seen = seen if seen is not None else set()
    r = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True)
    names = set()
    for line in r.stdout.splitlines()[1:]:
        w = line.strip()
        if not w or w.startswith("#"):
            continue
        if w.startswith("@"):
            if w not in seen:
                seen.add(w)
                names |= expand_filter(w, seen)
        else:
            names.add(w)
    return names

def mode_syscalls(trace, unit):
    used, families = set(), set()
    for line in open(trace):
        m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)", line)
        if m:
            used.add(m.group(1))
        m = re.match(r"\d+\s+socket\((AF_[A-Z0-9]+)", line)
        if m:
            families.add(m.group(1))
    sd = dict(re.findall(r"^(\w+)=(.*)$", open(unit).read(), re.M))
    check(f"strace saw the node's system calls ({len(used)})", len(used) > 20, sorted(used))
    allowed_fam = set(sd.get("RestrictAddressFamilies", "").split())
    check(f"socket families {sorted(families)} are in RestrictAddressFamilies",
          families and families <= allowed_fam, sorted(families - allowed_fam))
    if subprocess.run(["sh", "-c", "command -v systemd-analyze"], capture_output=True).returncode:
        print("skip system calls against SystemCallFilter (no systemd-analyze)")
        return
    groups = sd.get("SystemCallFilter", "").split()
    allowed = set()
    for g in groups:
        allowed |= expand_filter(g) if g.startswith("@") else {g}
    # exit/exit_group and the like are always allowed by systemd.
    allowed |= {"exit", "exit_group", "rt_sigreturn", "restart_syscall"}
    check(f"every system call the node made is in SystemCallFilter={' '.join(groups)}",
          allowed and used <= allowed, sorted(used - allowed))

# ---- the man page against every command's usage
def mode_man(page, fedbft):
    text = open(page).read()
    plain = text.replace("\\-", "-").replace("\\fB", "").replace("\\fI", "").replace("\\fR", "")
    out = subprocess.run([fedbft, "--help"], capture_output=True, text=True).stdout
    cmds = re.findall(r"^  ([a-z]+)  ", out, re.M)
    check(f"fedbft --help lists commands ({len(cmds)})", len(cmds) >= 10, cmds)
    missing = [c for c in cmds if not re.search(r'^\.B[IR]* "?' + c + r'\b', text, re.M)]
    check("the man page describes every command of fedbft --help", not missing, missing)
    absent = []
    for c in cmds:
        r = subprocess.run([fedbft, c, "--help"], capture_output=True, text=True)
        usage, inside = [], False
        for line in (r.stdout + r.stderr).splitlines():
            if line.startswith("Usage:"):
                inside = True
            elif inside and not line.startswith(" "):
                inside = False
            if inside:
                usage.append(line)
        for o in sorted(set(re.findall(r"--[a-z][a-z0-9-]*", " ".join(usage)))):
            if o != "--help" and o not in plain:
                absent.append(f"{c} {o}")
    check("the man page names every option of every command's usage lines", not absent, absent)

mode = sys.argv[1]
globals()["mode_" + mode.replace("-", "_")](*sys.argv[2:])
sys.exit(min(fails, 100))
PYEOF
export SRC=$src
quiet() { "$@" > /dev/null 2>&1; }
pycheck() { "$py" "$tmp/check.py" "$@"; fails=$((fails + $?)); }

# ---- 1. the Dockerfile's build stage, run here
stage_build=$(dirname "$FEDBFT")/deploy-stage
root=$tmp/root
SRC=$src BUILD=$stage_build DESTDIR=$root PREFIX=/usr \
    "$src/deploy/docker/build-stage.sh" > "$tmp/build.log" 2>&1
rc=$?
check "build-stage.sh builds and installs into a DESTDIR (exit $rc)" test $rc -eq 0
[ $rc -eq 0 ] || { tail -n 30 "$tmp/build.log"; exit 1; }
echo "     figure: build stage $((SECONDS - start)) s (incremental when $stage_build exists)"
bin=$root/usr/bin/fedbft

# ---- 2. the installed tree
check "installed: usr/bin/fedbft --help runs" bash -c '"$1" --help | grep -q "^Usage: fedbft"' _ "$bin"
check "installed: the binary is stripped (no .debug_info)" \
    bash -c '! LC_ALL=C readelf -S "$1" 2>/dev/null | grep -q "\.debug_info"' _ "$bin"
man1=$root/usr/share/man/man1/fedbft.1
unit=$root/usr/lib/systemd/system/fedbft.service
sysusers=$root/usr/lib/sysusers.d/fedbft.conf
example=$root/usr/share/doc/fedbft/examples/node.json
for f in "$man1" "$unit" "$sysusers" "$example"; do
    check "installed: ${f#"$root"/}" test -f "$f"
done
check "man page: roff with .TH FEDBFT 1 and NAME/SYNOPSIS/DESCRIPTION" \
    bash -c 'grep -q "^\.TH FEDBFT 1" "$1" && for s in NAME SYNOPSIS DESCRIPTION; do
             grep -q "^\.SH $s" "$1" || exit 1; done' _ "$man1"
if command -v man >/dev/null; then
    MANWIDTH=80 man --warnings -l "$man1" > "$tmp/man.txt" 2> "$tmp/man.err"
    check "man -l renders the page without warnings" bash -c \
        'test -s "$1" && ! test -s "$2" && grep -q "fedbft - a Byzantine" "$1"' _ "$tmp/man.txt" "$tmp/man.err"
    sed 's/^/     /' "$tmp/man.err" | head -5
else
    skip "man -l (man is not installed)"
fi
pycheck man "$man1" "$bin"
check "unit: ExecStart is the installed binary (prefix /usr)" \
    grep -qx "ExecStart=/usr/bin/fedbft run --config /etc/fedbft/node.json" "$unit"
check "unit: dedicated user, strict sandbox, state and config directories, restart policy" \
    bash -c 'for l in User=fedbft Group=fedbft ProtectSystem=strict StateDirectory=fedbft \
             StateDirectoryMode=0700 ConfigurationDirectory=fedbft Restart=on-failure RestartSec= \
             StartLimitIntervalSec= StartLimitBurst= NoNewPrivileges=yes ProtectHome=yes \
             PrivateTmp=yes PrivateDevices=yes CapabilityBoundingSet= UMask=0077 LimitNOFILE= \
             TimeoutStopSec= SystemCallFilter=@system-service \
             "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK"; do
             grep -q "^$l" "$1" || { echo "     missing: $l"; exit 1; }; done' _ "$unit"
check "sysusers.d: creates the system user fedbft" grep -qE "^u +fedbft +- " "$sysusers"
if command -v systemd-sysusers >/dev/null; then
    mkdir -p "$tmp/sysroot/etc"
    systemd-sysusers --root="$tmp/sysroot" "$sysusers" > "$tmp/sysusers.out" 2>&1
    check "systemd-sysusers applies the entry in a scratch root: user and group fedbft" \
        bash -c 'grep -q "^fedbft:x:[0-9]*:[0-9]*:.*:/var/lib/fedbft:/usr/sbin/nologin$" "$1/etc/passwd" &&
                 grep -q "^fedbft:" "$1/etc/group"' _ "$tmp/sysroot"
else
    skip "systemd-sysusers (not installed)"
fi
if command -v systemd-analyze >/dev/null; then
    # The unit as installed, its ExecStart pointed at the DESTDIR binary (it
    # must exist) and the man page on MANPATH (Documentation= is checked).
    sed "s|^ExecStart=/usr/bin/fedbft|ExecStart=$bin|" "$unit" > "$tmp/fedbft.service"
    MANPATH=$root/usr/share/man systemd-analyze verify "$tmp/fedbft.service" > "$tmp/verify.out" 2>&1
    rc=$?
    check "systemd-analyze verify: no error, no warning" bash -c '[ "$1" -eq 0 ] && ! test -s "$2"' _ $rc "$tmp/verify.out"
    sed 's/^/     /' "$tmp/verify.out" | head -5
    # Exposure 0 (locked down) .. 10 (unsafe); --threshold counts in tenths.
    systemd-analyze security --offline=yes --root="$root" --threshold=25 fedbft.service \
        > "$tmp/security.out" 2>&1
    rc=$?
    score=$(sed -n 's/.*Overall exposure level for fedbft.service: \([0-9.]*\).*/\1/p' "$tmp/security.out")
    check "systemd-analyze security: exposure ${score:-?} (at most 2.5)" \
        bash -c '[ "$1" -eq 0 ] && [ -n "$2" ]' _ $rc "$score"
    echo "     figure: systemd-analyze security exposure ${score:-?}"
else
    skip "systemd-analyze verify/security (systemd-analyze is not installed)"
fi
pycheck example "$example"

# ---- 3. the image's runtime libraries: ldd -> dpkg -S -> the Dockerfile's list
mapfile -t want < <("$py" "$tmp/check.py" packages)
check "Dockerfile: the runtime stage installs packages (${#want[@]})" test ${#want[@]} -gt 0
base_pkgs="libc6"  # in debian:bookworm-slim
if command -v dpkg >/dev/null; then
    need=()
    while read -r lib; do
        pkg=""
        for p in "$lib" "/usr$lib" "${lib#/usr}" "$(readlink -f "$lib")"; do
            pkg=$(dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
        done
        if [ -z "$pkg" ]; then
            check "$lib belongs to a Debian package" false
            continue
        fi
        need+=("$pkg")
        check "ldd: $(basename "$lib") ($pkg) is in the runtime stage or the base image" \
            bash -c 'for w in $2; do [ "$w" = "$1" ] && exit 0; done; exit 1' _ "$pkg" "${want[*]} $base_pkgs"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
    check "Dockerfile: every runtime package provides a library the binary needs" \
        bash -c 'for w in $1; do case " $2 " in *" $w "*) ;; *) echo "     unused: $w"; exit 1;; esac; done' \
        _ "${want[*]}" "${need[*]}"
else
    skip "ldd -> dpkg -S (no dpkg here)"
fi

# ---- 4. four nodes from the example node.json; the HEALTHCHECK and probes
mapfile -t hc < <("$py" "$tmp/check.py" healthcheck)
ran=0
for _ in 1 2 3; do
    base=$((1100 + (RANDOM % 14) * 50))  # ports P, P+100, P+200: 1100..1950
    rm -rf "$tmp/run"
    "$FEDBFT" cluster init --nodes 4 --dir "$tmp/run" --base-port "$base" --model none \
        --hosts 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 > /dev/null || break
    for i in 0 1 2 3; do
        "$py" "$tmp/check.py" example-node "$example" "$tmp/run" "$i" "$base" "$tmp/run/n$i.json"
    done
    # The HEALTHCHECK as the image runs it, on this run's HTTP port.
    hcmd=("$bin" "${hc[@]:1}")
    for ((k = 0; k < ${#hcmd[@]}; k++)); do [ "${hcmd[k]}" = --port ] && hcmd[k + 1]=$((base + 200)); done
    "$bin" run --config "$tmp/run/n0.json" > "$tmp/run/node0.log" 2>&1 &
    pids[0]=$!
    deadline=$((SECONDS + 15))
    until quiet "$bin" probe --config "$tmp/run/n0.json" --path /health --timeout-ms 1000; do
        kill -0 "${pids[0]}" 2>/dev/null && [ $SECONDS -lt $deadline ] || break
        sleep 0.2
    done
    if kill -0 "${pids[0]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; then ran=1; break; fi
    kill "${pids[0]}" 2>/dev/null; wait "${pids[0]}" 2>/dev/null
    grep -q "in use" "$tmp/run/node0.log" || break
    echo "     ports of base $base are in use; another base"
done
check "node 0 runs from the example node.json and answers /health" test $ran -eq 1
if [ $ran -eq 1 ]; then
    check "node 0 made its admin socket in data_dir" test -S "$tmp/run/data0/admin.sock"
    "${hcmd[@]}" > "$tmp/hc.out" 2>&1
    check "HEALTHCHECK fails while node 0 has no quorum (exit 1)" test $? -eq 1
    # Node 3 runs under strace when it can: the system calls and socket
    # families of a node starting, committing, answering HTTP and the admin
    # socket, and stopping, against the unit's SystemCallFilter and
    # RestrictAddressFamilies.
    traced=0
    if command -v strace > /dev/null && strace -f -qq -o /dev/null true 2> /dev/null; then
        traced=1
        strace -f -qq -o "$tmp/strace.out" "$bin" run --config "$tmp/run/n3.json" > "$tmp/run/node3.log" 2>&1 &
        pids[3]=$!
    fi
    for i in 1 2 3; do
        [ $i -eq 3 ] && [ $traced -eq 1 ] && continue
        "$bin" run --config "$tmp/run/n$i.json" > "$tmp/run/node$i.log" 2>&1 &
        pids[i]=$!
    done
    wait_for "HEALTHCHECK (${hc[*]}) passes once a quorum is up" 30 quiet "${hcmd[@]}"
    check "probe --config of the example node.json: /ready" \
        quiet "$bin" probe --config "$tmp/run/n3.json" --path /ready
    check "a put commits on the nodes run from the example node.json" quiet "$FEDBFT" client \
        --cluster "$tmp/run/cluster.json" --key "$tmp/run/clients/client0/node.key" put deploy ok
    check "node 3 answers on its admin socket" \
        quiet "$FEDBFT" ctl --socket "$tmp/run/data3/admin.sock" status
    check "node 3 answers /metrics" quiet "$bin" probe --config "$tmp/run/n3.json" --path /metrics
    # strace passes on the exit status but not a SIGTERM sent to it: signal the node.
    node3=${pids[3]}
    [ $traced -eq 1 ] && node3=$(ps -o pid= --ppid "${pids[3]}" | tr -d ' ')
    for i in 0 1 2; do kill -TERM "${pids[i]}"; done
    kill -TERM "$node3"
    for i in 0 1 2 3; do
        deadline=$((SECONDS + 20))
        while kill -0 "${pids[i]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        kill -0 "${pids[i]}" 2>/dev/null && kill -9 "${pids[i]}"
        wait "${pids[i]}"
        rc=$?
        check "node $i stops on SIGTERM with exit 0 within 20 s (got $rc)" test $rc -eq 0
    done
    pids=()
    if [ $traced -eq 1 ]; then
        "$py" "$tmp/check.py" syscalls "$tmp/strace.out" "$src/deploy/systemd/fedbft.service.in"
        fails=$((fails + $?))
    else
        skip "system calls against the unit's filters (no strace, or ptrace not allowed)"
    fi
fi

# ---- 5. docker-compose.yml: its init step, run here twice
"$py" "$tmp/check.py" compose-init > "$tmp/compose-init.sh"
mkdir -p "$tmp/compose"
PATH=$(dirname "$FEDBFT"):$PATH FEDBFT_DIR=$tmp/compose sh "$tmp/compose-init.sh" > "$tmp/ci.out" 2>&1
check "compose init step makes the cluster (exit $?)" test -f "$tmp/compose/.init-done"
[ -f "$tmp/compose/.init-done" ] || sed 's/^/     /' "$tmp/ci.out"
sum1=$(cat "$tmp/compose/cluster.json" "$tmp/compose"/node*/node.key | md5sum)
PATH=$(dirname "$FEDBFT"):$PATH FEDBFT_DIR=$tmp/compose sh "$tmp/compose-init.sh" > "$tmp/ci2.out" 2>&1
rc=$?
check "compose init step run again: exit 0, keys kept" \
    bash -c '[ "$1" -eq 0 ] && [ "$2" = "$(cat "$3/cluster.json" "$3"/node*/node.key | md5sum)" ]' \
    _ $rc "$sum1" "$tmp/compose"
# A run cut short after the keys but before cluster.json and the marker is
# redone, not locked out by the keys it left.
mkdir -p "$tmp/compose-cut"
cp -r "$tmp/compose"/node0 "$tmp/compose-cut"/
PATH=$(dirname "$FEDBFT"):$PATH FEDBFT_DIR=$tmp/compose-cut sh "$tmp/compose-init.sh" > "$tmp/ci3.out" 2>&1
rc=$?
check "compose init step after a run cut short (keys left, no cluster.json): exit 0 ($rc), cluster made" \
    bash -c '[ "$1" -eq 0 ] && [ -f "$2/.init-done" ] && [ -f "$2/cluster.json" ]' _ $rc "$tmp/compose-cut"
[ $rc -eq 0 ] || sed 's/^/     /' "$tmp/ci3.out"
pycheck compose "$tmp/compose"
if docker compose version > /dev/null 2>&1; then
    check "docker compose config accepts docker-compose.yml" docker compose -f "$src/docker-compose.yml" config -q
elif command -v docker-compose > /dev/null; then
    check "docker-compose config accepts docker-compose.yml" docker-compose -f "$src/docker-compose.yml" config -q
else
    skip "docker compose config (no compose here)"
fi
pycheck dockerfile

# ---- 6. Kubernetes: gen.sh into a copy of deploy/k8s, the pod's scripts
k8s=$tmp/k8s
cp -r "$src/deploy/k8s" "$k8s"
rm -f "$k8s/configmap.yaml" "$k8s/secrets.yaml"
"$k8s/gen.sh" --out "$k8s" --fedbft "$FEDBFT" > "$tmp/gen.out" 2>&1
check "gen.sh writes configmap.yaml and secrets.yaml (exit $?)" \
    test -f "$k8s/configmap.yaml" -a -f "$k8s/secrets.yaml"
check "gen.sh: secrets.yaml is mode 0600" test "$(stat -c %a "$k8s/secrets.yaml")" = 600
"$k8s/gen.sh" --out "$k8s" --fedbft "$FEDBFT" > "$tmp/gen2.out" 2>&1
check "gen.sh refuses to replace the keys without --force" \
    bash -c '[ "$1" -eq 1 ] && grep -q -- "--force" "$2"' _ $? "$tmp/gen2.out"
"$k8s/gen.sh" --out "$k8s" --fedbft "$FEDBFT" --namespace other --force > "$tmp/gen3.out" 2>&1
check "gen.sh refuses a namespace the kustomization does not deploy into" \
    bash -c '[ "$1" -eq 1 ] && grep -q "namespace" "$2"' _ $? "$tmp/gen3.out"
"$k8s/gen.sh" --out "$k8s" --fedbft "$FEDBFT" --namespace 'Bad_NS' --force > "$tmp/gen4.out" 2>&1
check "gen.sh refuses an invalid namespace name" \
    bash -c '[ "$1" -eq 1 ] && grep -q "not a valid namespace" "$2"' _ $? "$tmp/gen4.out"
yaml_ok=0
for f in "$src/docker-compose.yml" "$src"/deploy/k8s/*.yaml "$k8s/configmap.yaml" "$k8s/secrets.yaml"; do
    "$py" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$f" 2> "$tmp/yaml.err" ||
        { check "YAML parses: $f" false; sed 's/^/     /' "$tmp/yaml.err"; continue; }
    yaml_ok=$((yaml_ok + 1))
done
echo "ok   $yaml_ok YAML files parse"
pycheck k8s "$k8s" "$FEDBFT"
# The pod's init container script: installs its own key, mode 0600.
mkdir -p "$tmp/pod"
"$py" "$tmp/check.py" k8s-scripts "$tmp/pod"
mkdir -p "$tmp/pod/run/fedbft/secrets" "$tmp/pod/run/fedbft/key"
for i in 0 1 2 3; do
    install -m 0440 "$k8s/key$i" "$tmp/pod/run/fedbft/secrets/node-$i.key"
done
sed -i "s|/run/fedbft|$tmp/pod/run/fedbft|g" "$tmp/pod/init.sh"
POD_NAME=fedbft-2 sh "$tmp/pod/init.sh" > "$tmp/pod/init.out" 2>&1
check "init container (pod fedbft-2): installs replica 2's key, mode 0600, that fedbft accepts" \
    bash -c '[ "$(stat -c %a "$1")" = 600 ] && cmp -s "$1" "$2" && "$3" keyinfo "$1" &> /dev/null' \
    _ "$tmp/pod/run/fedbft/key/node.key" "$k8s/key2" "$FEDBFT"
POD_NAME=fedbft sh "$tmp/pod/init.sh" > "$tmp/pod/init2.out" 2>&1
check "init container: a pod name without an ordinal is refused" \
    bash -c '[ "$1" -ne 0 ] && grep -q "no ordinal" "$2"' _ $? "$tmp/pod/init2.out"
sed -i "s|^exec fedbft run --config|printf %s|" "$tmp/pod/main.sh"
check "main container (pod fedbft-3) runs /etc/fedbft/config/node-3.json" \
    test "$(POD_NAME=fedbft-3 sh "$tmp/pod/main.sh")" = /etc/fedbft/config/node-3.json
if command -v kubectl > /dev/null; then
    kubectl kustomize "$k8s" > "$tmp/kustomize.out" 2> "$tmp/kustomize.err"
    rc=$?
    check "kubectl kustomize builds deploy/k8s with gen.sh's files (exit $rc)" \
        bash -c '[ "$1" -eq 0 ] && [ "$(grep -c "^kind: " "$2")" -eq 9 ] &&
                 [ "$(grep -c "^  namespace: fedbft$" "$2")" -eq 9 ]' _ $rc "$tmp/kustomize.out"
    sed 's/^/     /' "$tmp/kustomize.err" | head -5
else
    skip "kubectl kustomize (kubectl is not installed)"
fi

# ---- 7. what the code serves: the probe paths the files use
check "the node serves /health and /ready (node/node.c)" \
    bash -c 'grep -q "\"/health\"" "$1" && grep -q "\"/ready\"" "$1"' _ "$src/node/node.c"

echo "     figure: deploy_test $((SECONDS - start)) s"
echo "deploy: $fails failed, $skips skipped"
[ "$fails" -eq 0 ]
