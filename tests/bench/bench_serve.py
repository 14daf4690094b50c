#!/usr/bin/env python3
"""bench_serve.py - the inference API under load, in one run on one local
4-node cluster serving the synthesized small model (made by `cluster init`):

  1. batching: C concurrent HTTP clients send completions to node 0
     (max_batch 8) and to node 1 (max_batch 1): tokens/s, requests/s and
     latency p50/p99 for each, and the ratio;
  2. the response cache: latency of a miss (first time) and of a hit (the
     same greedy request again);
  3. consensus first: commit latency of `fedbft client load` without and
     with inference load from 8 clients on --load-nodes nodes (default 1:
     a busy model on one replica; 4 puts all four replicas' inference on
     this one 2-core machine) (p50/p99 and the p99 ratio).

  bench_serve.py PATH_TO_FEDBFT [--clients C] [--requests R] [--tokens N]
                 [--load-nodes K]

The completions sample (temperature 0.7, no seed) so that the cache never
answers them; max_tokens N each (default 64).
"""
import argparse, json, os, random, re, shutil, statistics, subprocess, sys, tempfile
import threading, time, urllib.request


def post(port, body, timeout=300):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())
    return time.monotonic() - t0, out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def load_http(port, clients, requests, tokens, tag):
    """clients threads, each sending `requests` completions one after another."""
    lat, toks, errors = [], [], []
    lock = threading.Lock()

    def worker(w):
        for i in range(requests):
            body = {"prompt": f"{tag} client {w} request {i}: the nodes agree",
                    "max_tokens": tokens, "temperature": 0.7}
            try:
                dt, out = post(port, body)
                with lock:
                    lat.append(dt)
                    toks.append(out["usage"]["completion_tokens"])
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    return {"tok_s": sum(toks) / wall, "req_s": len(lat) / wall, "p50": pct(lat, 50) if lat else 0,
            "p99": pct(lat, 99) if lat else 0, "errors": len(errors), "n": len(lat)}


def commit_load(fedbft, cdir, writes):
    out = subprocess.run([fedbft, "client", "--cluster", f"{cdir}/cluster.json", "--keys",
                          f"{cdir}/clients", "load", "--writes", str(writes), "--concurrency", "8"],
                         capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fedbft")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--load-nodes", type=int, default=1,
                    help="nodes serving inference during the commit-latency run (default 1)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fedbft-bench-serve-")
    cdir = f"{tmp}/cluster"
    base = 30200 + random.randrange(12) * 200  # below the ephemeral ports (32768+)
    F = a.fedbft
    try:
        subprocess.run([F, "cluster", "init", "--nodes", "4", "--dir", cdir, "--base-port",
                        str(base), "--durability", "os"], check=True, capture_output=True)
        for i, knobs in ((0, {"max_batch": 8}), (1, {"max_batch": 1})):
            p = f"{cdir}/node{i}/node.json"
            cfg = json.load(open(p))
            cfg["inference"].update(knobs)
            json.dump(cfg, open(p, "w"), indent=2)
        subprocess.run([F, "cluster", "up", "--dir", cdir], check=True, capture_output=True)
        port = lambda i: base + 200 + i  # noqa: E731
        post(port(0), {"prompt": "warm up", "max_tokens": 4, "temperature": 0})
        post(port(1), {"prompt": "warm up", "max_tokens": 4, "temperature": 0})

        print(f"bench_serve: 4-node cluster, synthesized small model (Q8_0), {a.clients} "
              f"concurrent HTTP clients x {a.requests} completions x {a.tokens} tokens, "
              "2 inference threads per node, all on this machine")
        b = load_http(port(0), a.clients, a.requests, a.tokens, "batched")
        s = load_http(port(1), a.clients, a.requests, a.tokens, "serial")
        print(f"\n{'':22}{'tokens/s':>10}{'req/s':>8}{'p50 s':>8}{'p99 s':>8}{'errors':>8}")
        for name, r in (("max_batch 8 (node 0)", b), ("max_batch 1 (node 1)", s)):
            print(f"{name:22}{r['tok_s']:10.0f}{r['req_s']:8.2f}{r['p50']:8.2f}{r['p99']:8.2f}"
                  f"{r['errors']:8d}")
        print(f"batching / max batch 1: {b['tok_s'] / s['tok_s']:.2f}x tokens/s")

        miss, hit = [], []
        for i in range(10):
            body = {"prompt": f"cache probe {i}", "max_tokens": 32, "temperature": 0}
            miss.append(post(port(2), body)[0])
            dt, out = post(port(2), body)
            assert out["fedbft"]["cached"], out
            hit.append(dt)
        print(f"\nresponse cache (node 2, 32-token greedy completions, 10 prompts): miss p50 "
              f"{statistics.median(miss) * 1e3:.1f} ms, hit p50 {statistics.median(hit) * 1e3:.2f}"
              f" ms: {statistics.median(miss) / statistics.median(hit):.0f}x")

        quiet = commit_load(F, cdir, 400)
        stop = threading.Event()

        def background(i):
            while not stop.is_set():
                try:
                    post(port(i), {"prompt": f"background {random.random()}",
                                   "max_tokens": 32, "temperature": 0.7})
                except Exception:  # noqa: BLE001 - queue full is fine here
                    time.sleep(0.05)

        bg = [threading.Thread(target=background, args=(i % a.load_nodes,)) for i in range(8)]
        for t in bg:
            t.start()
        time.sleep(1.0)
        busy = commit_load(F, cdir, 400)
        stop.set()
        for t in bg:
            t.join()
        print(f"\ncommit latency, 400 writes from 8 clients (fedbft client load):")
        print(f"  without inference: {quiet['writes_per_sec']:.0f} writes/s, p50 "
              f"{quiet['p50_ms']:.1f} ms, p99 {quiet['p99_ms']:.1f} ms")
        where = "node 0" if a.load_nodes == 1 else f"nodes 0..{a.load_nodes - 1}"
        print(f"  with 8 clients' inference load on {where}: {busy['writes_per_sec']:.0f} writes/s, p50 "
              f"{busy['p50_ms']:.1f} ms, p99 {busy['p99_ms']:.1f} ms")
        print(f"  p99 with / without: {busy['p99_ms'] / quiet['p99_ms']:.2f}x")
    finally:
        subprocess.run([F, "cluster", "down", "--dir", cdir], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
