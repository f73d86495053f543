#!/usr/bin/env python3
"""Hot reload: how long `POST /admin/reload` takes, and what 100 reloads do to the RSS.

Starts the release binary with a fresh `HOME` (its own Hyperscan cache) on a config whose
`masking.rules_dir` holds one extra rule, then measures:

- `unchanged pack`: a reload that re-reads the same files (databases from the cache);
- `changed pack, cold`: a reload after a rule's pattern changed to one never compiled before
  (both Hyperscan databases are compiled on the reload's thread);
- `changed pack, checked first`: the same after `streammask config check` compiled and cached
  the new files, as a rollout validates them first;
- RSS after 20 reloads (to settle), then after each of three rounds of 100 reloads: a leak
  grows every round, allocator noise does not.

Usage: python3 bench/reload.py [--bin target/release/streammask] [--runs 5]
Timing only; it asserts nothing. tests/python/test_reload.py holds the assertions.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOKEN = "reload-bench-admin-token"


def rule(n: int) -> str:
    return f"""
[[rules]]
id = "bench-reload-{n}"
description = "an organisation's own token format (reload benchmark, variant {n})"
pattern = '''\\bbr{n}x_[a-z0-9]{{24}}\\b'''
action = "mask"
examples = ["br{n}x_abcdefghijklmnopqrstuvwx"]
negative_examples = ["br{n}x_short"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reload(admin: int) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/admin/reload", method="POST",
                                     headers={"authorization": f"Bearer {TOKEN}"})
    start = time.monotonic()
    with urllib.request.urlopen(request, timeout=300) as r:
        r.read()
        if r.status != 200:
            sys.exit(f"reload answered {r.status}")
    return time.monotonic() - start


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "streammask"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="streammask-reload-")
    rules = os.path.join(work, "rules")
    os.mkdir(rules)
    rule_file = os.path.join(rules, "org.toml")
    with open(rule_file, "w") as f:
        f.write(rule(0))
    port, admin = free_port(), free_port()
    config = os.path.join(work, "streammask.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nadmin = "127.0.0.1:{admin}"\n'
                f'admin_token_env = "RELOAD_BENCH_TOKEN"\n[upstream]\nurl = "http://127.0.0.1:9"\n'
                f'[masking]\nrules_dir = "{rules}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMMASK_")}
    env.pop("XDG_CACHE_HOME", None)
    env.update(HOME=work, RELOAD_BENCH_TOKEN=TOKEN,
               STREAMMASK_PLACEHOLDER_KEY="reload-bench-placeholder-key-0123456789")
    proc = subprocess.Popen([args.bin, "run", "--config", config], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("streammask did not become ready")
                time.sleep(0.05)
        fmt = lambda xs: f"{statistics.median(xs) * 1000:.0f} ms ({max(xs) * 1000:.0f})"
        print(f"binary: {args.bin}; {args.runs} runs per case; median (worst)")
        print(f"{'unchanged pack':<30} {fmt([reload(admin) for _ in range(args.runs)])}")
        cold, checked = [], []
        for n in range(1, args.runs + 1):
            with open(rule_file, "w") as f:
                f.write(rule(n))
            cold.append(reload(admin))
        for n in range(args.runs + 1, 2 * args.runs + 1):
            staging = os.path.join(work, f"staging-{n}")
            os.mkdir(staging)
            with open(os.path.join(staging, "org.toml"), "w") as f:
                f.write(rule(n))
            staged = os.path.join(work, f"staging-{n}.toml")
            with open(staged, "w") as f:
                f.write(f'[masking]\nrules_dir = "{staging}"\n')
            subprocess.run([args.bin, "config", "check", staged], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(rule_file, "w") as f:
                f.write(rule(n))
            checked.append(reload(admin))
        print(f"{'changed pack, cold':<30} {fmt(cold)}")
        print(f"{'changed pack, checked first':<30} {fmt(checked)}")
        for _ in range(20):
            reload(admin)
        rss = [rss_kib(proc.pid)]
        started = time.monotonic()
        for _ in range(3):
            for _ in range(100):
                reload(admin)
            rss.append(rss_kib(proc.pid))
        took = (time.monotonic() - started) / 3
        steps = ", ".join(f"{b - a:+d}" for a, b in zip(rss, rss[1:]))
        print(f"{'100 reloads':<30} {took:.1f} s each; RSS {rss[0]} KiB, then per 100 reloads: {steps} KiB")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
