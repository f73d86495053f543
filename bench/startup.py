#!/usr/bin/env python3
"""Start-up time of streammask, cold and warm: how long `streammask run` takes to listen and to
answer `/readyz`, and how much CPU `streammask scan` of one line costs.

Every case runs the release binary as a new process with a fresh `HOME` and no
`STREAMMASK_HS_CACHE_DIR`, so the Hyperscan database cache is the default one under that
`HOME` (`~/.cache/streammask/hyperscan`):

- `default pack, cold`: an empty cache; the default pack's databases are the ones embedded in
  the binary at build time;
- `default pack, warm`: the same `HOME` again;
- `pack + 1 rule, cold`: the default pack plus one rule from `--rules`: no embedded database
  fits, so both databases are compiled (and cached);
- `pack + 1 rule, warm`: the same again, loaded from the cache;
- `3 profiles, cold`: two profiles that turn rules off or change actions share the default
  pack's databases;
- `100,000-term dictionary`: a `[[dictionaries]]` entry of 100,000 generated names (issue 20):
  cold starts on automata for the terms and compiles their databases in the background (a first
  start after the list changed), warm loads the cached databases. For this case the column
  `compiled s` is when the log says the databases compiled in the background are in use (cold;
  `-` when warm: nothing is compiled), and its `run CPU s` includes that compile.

Usage: python3 bench/startup.py [--bin target/release/streammask] [--runs 5]
Prints the median and the worst of `--runs` runs per case. Timing only; it asserts nothing.
"""

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

EXTRA_RULE = """
[[rules]]
id = "bench-startup-extra"
description = "an organisation's own token format (start-up benchmark)"
pattern = '''\\bbsx_[a-z0-9]{24}\\b'''
action = "mask"
examples = ["bsx_abcdefghijklmnopqrstuvwx"]
negative_examples = ["bsx_short"]
"""

PROFILES = """
[[profiles]]
name = "contractors"
groups = ["contractors"]
disable_rules = ["generic-password-unquoted"]

[[profiles]]
name = "security"
groups = ["security"]
actions = { "aws-access-key-id" = "block" }
"""


def made_up_names(count: int, seed: int = 20) -> list[str]:
    """`count` distinct made-up names, one in ten of two words (customer-name shaped)."""
    import random
    syllables = ["ka", "zo", "ri", "ven", "tal", "mu", "qui", "dor", "xan", "pe", "lo", "brim",
                 "sa", "tor", "vel", "ny", "gra", "fen", "os", "ul"]
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        name = "".join(rng.choice(syllables) for _ in range(rng.randint(3, 5))).capitalize()
        if rng.random() < 0.1:
            name += " Group"
        names.add(name)
    return sorted(names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def environment(home: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMMASK_")}
    env.pop("XDG_CACHE_HOME", None)
    env["HOME"] = home
    env["STREAMMASK_PLACEHOLDER_KEY"] = "startup-bench-placeholder-key-0123456789"
    return env


COMPILED_LOG = "databases compiled in the background are in use"


def time_run(binary: str, home: str, extra_args: list[str],
             until_compiled: bool = False) -> tuple[float, float, float, float | None]:
    """Seconds until the proxy port accepts, until /readyz answers 200, CPU seconds used until
    it was stopped (at ready, or with `until_compiled` once the log says a background compile
    is in use), and the seconds until that log line (None when no compile was started)."""
    port, admin = free_port(), free_port()
    while admin == port:  # the kernel may hand out a just-freed port again
        admin = free_port()
    cpu_before = child_cpu()
    start = time.monotonic()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [binary, "run", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
         "--upstream", "http://127.0.0.1:9", *extra_args],
        env=environment(home), stdout=log, stderr=subprocess.STDOUT,
    )
    listening = ready = compiled = None
    try:
        deadline = start + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if listening is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    listening = time.monotonic() - start
                except OSError:
                    pass
            if listening is not None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                        if r.status == 200:
                            ready = time.monotonic() - start
                            break
                except OSError:
                    pass
            time.sleep(0.002)
        if ready is None:
            sys.exit(f"streammask did not become ready (exit code {proc.poll()})")
        while until_compiled and time.monotonic() < deadline and proc.poll() is None:
            log.seek(0)
            text = log.read().decode(errors="replace")
            if COMPILED_LOG in text:
                compiled = time.monotonic() - start
                break
            if "interim" not in text:
                break  # nothing compiles in the background
            time.sleep(0.02)
    finally:
        # Not SIGTERM: that starts the graceful drain, which is not what is measured here.
        proc.kill()
        proc.wait(timeout=30)
        log.close()
    return listening, ready, child_cpu() - cpu_before, compiled


def time_scan(binary: str, home: str, extra_args: list[str]) -> float:
    cpu_before = child_cpu()
    subprocess.run([binary, "scan", *extra_args], input=b"deploy with key AKIAQ7ZRLMNB2XKTW5VD\n",
                   env=environment(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return child_cpu() - cpu_before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "streammask"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"no binary at {args.bin} (cargo build --release, or pass --bin)")

    work = tempfile.mkdtemp(prefix="streammask-startup-")
    try:
        rules = os.path.join(work, "rules")
        os.mkdir(rules)
        with open(os.path.join(rules, "extra.toml"), "w") as f:
            f.write(EXTRA_RULE)
        config = os.path.join(work, "profiles.toml")
        with open(config, "w") as f:
            f.write(PROFILES)

        terms = os.path.join(work, "customers.txt")
        with open(terms, "w") as f:
            f.write("\n".join(made_up_names(100_000)) + "\n")
        dictionary = os.path.join(work, "dictionary.toml")
        with open(dictionary, "w") as f:
            f.write(f'[[dictionaries]]\nid = "customers"\npath = "{terms}"\n')

        cases = [
            ("default pack", [], "default"),
            ("pack + 1 rule", ["--rules", rules], "extra"),
            ("3 profiles", ["--config", config], "profiles"),
            ("100,000-term dictionary", ["--config", dictionary], "dictionary"),
        ]
        print(f"binary: {args.bin}; {args.runs} runs per case; median (worst)")
        print(f"{'case':<34} {'listening s':>16} {'/readyz s':>16} {'run CPU s':>16} "
              f"{'scan CPU s':>16} {'compiled s':>16}")
        for name, extra, tag in cases:
            background = tag == "dictionary"
            for state in ("cold", "warm"):
                listening, ready, cpu, scan_cpu, compiled = [], [], [], [], []
                for n in range(args.runs):
                    home = os.path.join(work, f"home-{tag}-{state}-{n}")
                    if state == "cold":
                        shutil.rmtree(home, ignore_errors=True)
                        os.mkdir(home)
                    elif not os.path.isdir(home):
                        os.mkdir(home)
                        time_run(args.bin, home, extra, background)  # fill the cache
                    l, r, c, done = time_run(args.bin, home, extra, background)
                    listening.append(l)
                    ready.append(r)
                    cpu.append(c)
                    if done is not None:
                        compiled.append(done)
                    if state == "cold":
                        shutil.rmtree(home)
                        os.mkdir(home)
                    # `scan --config` takes the dictionaries; profiles do not change a scan.
                    scan_extra = extra if tag == "dictionary" else \
                        [a for a in extra if a != "--config" and a != config]
                    if tag != "profiles":
                        scan_cpu.append(time_scan(args.bin, home, scan_extra))
                fmt = lambda xs: f"{statistics.median(xs):.3f} ({max(xs):.3f})" if xs else "-"
                print(f"{name + ', ' + state:<34} {fmt(listening):>16} {fmt(ready):>16} "
                      f"{fmt(cpu):>16} {fmt(scan_cpu):>16} {fmt(compiled):>16}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
