#!/usr/bin/env python3
"""Measures how long the survivors of a 3-replica braid cluster take to own every partition after one
replica is SIGKILLed. Default lease timing unless flags are given after `--`.

    cargo build && python3 bench/takeover.py [--bin target/debug/braid] [--mysql mysql://root@127.0.0.1:3306] [-- flags...]

Starts three `braid serve` processes on a fresh database, waits until they hold all partitions, kills one,
and polls the survivors' /api/braid/cluster every 50 ms until their own partitions cover all of them.
"""
import argparse, json, os, socket, subprocess, sys, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/debug/braid")
ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306")
ap.add_argument("flags", nargs="*")
args = ap.parse_args()
db = "braid_takeover_%d" % os.getpid()
dsn = "%s/%s" % (args.mysql.rstrip("/"), db)


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


procs = {}
for n in ["t0", "t1", "t2"]:
    hp = port()
    cmd = [args.bin, "serve", "--bind", "127.0.0.1", "--store", dsn, "--node-id", n,
           "--http-port", str(hp), "--grpc-port", str(port()), "--log-level", "error"] + args.flags
    procs[n] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL), hp)
    time.sleep(0.5)


def own(n):
    try:
        url = "http://127.0.0.1:%d/api/braid/cluster" % procs[n][1]
        view = json.load(urllib.request.urlopen(url, timeout=2))
        return view["partitions"], [set(m["partitions"]) for m in view["members"] if m["node_id"] == n][0]
    except Exception:
        return None


def full(nodes):
    seen, total = set(), None
    for n in nodes:
        got = own(n)
        if got is None or seen & got[1]:
            return False
        total = got[0]
        seen |= got[1]
    return len(seen) == total


try:
    start = time.time()
    while not full(["t0", "t1", "t2"]):
        if time.time() - start > 60:
            sys.exit("the three replicas did not share all partitions within 60 s")
        time.sleep(0.2)
    time.sleep(3)
    procs["t0"][0].kill()
    killed = time.time()
    while not full(["t1", "t2"]):
        time.sleep(0.05)
    print("takeover after SIGKILL: %.2f s" % (time.time() - killed))
finally:
    for p, _ in procs.values():
        p.kill()
        p.wait()
    print("database %s is left for inspection (DROP DATABASE %s; when done)" % (db, db))
