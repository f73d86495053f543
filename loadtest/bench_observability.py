#!/usr/bin/env python3
"""Benchmark of the observability cost (issue 5): streamed requests per second through
streammask with metrics, the audit log and transcripts all on, against the same proxy build with
metrics and audit off. Budget: the "on" configuration keeps at least 95 % of the "off" req/s.

Everything runs on loopback and stops by itself (about two minutes with the defaults):

  streammask-mock  --no-record --no-split-writes --threads 1
  streammask run   "off": [metrics] enabled = false, [audit] sink = "off"
  streammask run   "on":  [metrics] enabled = true, [audit] sink = "file" with transcripts = true
                   (the audit file is in the temp dir), both RUST_LOG=warn, server.threads 2
  wrk              POST stream:true /v1/messages, a request with one secret to mask (so every
                   audit record has a finding and transcripts), x-claude-code-session-id set

Both proxies run at the same time and are measured in alternating order (off, on, on, off, …)
for --rounds rounds, so a busy period on a shared machine hits both; the report gives the
median req/s of each and the ratio of the medians, plus the proxy's CPU time per request (the
steadier figure when other work competes for the CPUs). After the runs the script checks that
the "on" proxy wrote one audit record per request it counted on /metrics.

Reuses the helpers of bench_proxy.py (same directory). Requirements: Python 3.11 stdlib, wrk,
the release binaries in $STREAMMASK_BIN_DIR (default /root/.cache/streammask-target/release).
Exit status: 0 after a complete run (the verdict line says whether the budget was met), 2 on a
failure, 3 when a tool is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_proxy as bp  # noqa: E402

SECRET = "ghp_" + "bEnChMaRk0123456789abcdefghijklmnopqrs"[:36]
LUA = """wrk.method = "POST"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"Deploy with %s and summarise the deploy script in two sentences."}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-claude-code-session-id"] = "bench-session-0001"
wrk.headers["x-mock-script"] = '%s'
"""


def metrics_requests(admin_port: int) -> float:
    with bp.NO_PROXY_OPENER.open(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("streammask_requests_total{"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up per proxy")
    ap.add_argument("--rounds", type=int, default=6, help="runs per configuration, alternating")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--start-timeout", type=float, default=240)
    ap.add_argument("--no-transcripts", action="store_true",
                    help="skip the configuration with transcripts on")
    ap.add_argument("--breakdown", action="store_true",
                    help="also measure metrics only and audit without transcripts")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything at this nice value (e.g. -10 as root on a shared machine)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)  # inherited by every process started below
    signal.signal(signal.SIGTERM, lambda *_: bp.die("terminated", 143))
    signal.signal(signal.SIGALRM, lambda *_: bp.die("time limit reached (stuck?)", 124))
    signal.alarm(int((60 + 2 * args.start_timeout + 2 * (args.warmup + args.rounds * (args.duration + 2))) * 1.5))

    bin_dir = os.environ.get("STREAMMASK_BIN_DIR", bp.DEFAULT_BIN_DIR)
    sm_bin, mock_bin = os.path.join(bin_dir, "streammask"), os.path.join(bin_dir, "streammask-mock")
    wrk_bin = shutil.which("wrk")
    missing = [b for b in (sm_bin, mock_bin) if not os.access(b, os.X_OK)]
    if not wrk_bin:
        missing.append("wrk (apt-get install -y wrk)")
    if missing:
        print("bench_observability: missing:\n  " + "\n  ".join(missing), file=sys.stderr)
        sys.exit(3)
    tmp = tempfile.mkdtemp(prefix="streammask-obs-bench-")
    for b in (sm_bin, mock_bin):
        shutil.copy2(b, tmp)
    sm_bin, mock_bin = os.path.join(tmp, "streammask"), os.path.join(tmp, "streammask-mock")
    info = bp.machine_info()
    info.update({"wrk": bp.tool_version([wrk_bin, "-v"]),
                 "git": bp.git_rev(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                 "command": shlex.join([sys.executable] + sys.argv), "loadavg_start": bp.loadavg()})
    results = {"machine": info, "args": vars(args)}
    try:
        port_file = os.path.join(tmp, "mock.port")
        mock = bp.spawn([mock_bin, "--listen", "127.0.0.1:0", "--port-file", port_file, "--no-record",
                         "--no-split-writes", "--threads", "1"], stdout=subprocess.DEVNULL,
                        stderr=open(os.path.join(tmp, "mock.log"), "w"))
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if mock.poll() is not None or time.monotonic() > deadline:
                bp.die(f"streammask-mock did not start (see {tmp}/mock.log)")
            time.sleep(0.02)
        up = f"http://127.0.0.1:{open(port_file).read()}"
        audit = os.path.join(tmp, "audit.jsonl")
        audit_on = f'sink = "file"\npath = "{audit}"\nmax_bytes = 1073741824\nmax_files = 2\n'
        all_configs = {
            "off": '[metrics]\nenabled = false\n[audit]\nsink = "off"\n',
            # The budgeted configuration: every metric, and one audit record per request.
            "on": f'[metrics]\nenabled = true\n[audit]\n{audit_on}transcripts = false\n',
            # Optional transcripts on top (reported, not budgeted).
            "transcripts": ('[metrics]\nenabled = true\n[audit]\n' + audit_on.replace("audit.jsonl", "audit-t.jsonl")
                            + "transcripts = true\n"),
            # For finding where a cost comes from (--breakdown):
            "metrics": '[metrics]\nenabled = true\n[audit]\nsink = "off"\n',
            "audit": ('[metrics]\nenabled = false\n[audit]\n' + audit_on.replace("audit.jsonl", "audit-a.jsonl")
                      + "transcripts = false\n"),
        }
        names = ["off", "on"] + ([] if args.no_transcripts else ["transcripts"])
        configs = {n: all_configs[n] for n in names + (["metrics", "audit"] if args.breakdown else [])}
        env = dict(os.environ, STREAMMASK_PLACEHOLDER_KEY=bp.PLACEHOLDER_KEY, RUST_LOG="warn")
        proxies = {}
        for name, text in configs.items():
            cfg = os.path.join(tmp, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(text)
            port, admin = bp.free_port(), bp.free_port()
            cmd = [sm_bin, "run", "--config", cfg, "--listen", f"127.0.0.1:{port}", "--admin",
                   f"127.0.0.1:{admin}", "--upstream", up]
            proc = bp.spawn(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(tmp, f"streammask-{name}.log"), "w"))
            proxies[name] = {"proc": proc, "port": port, "admin": admin, "cmd": shlex.join(cmd), "config": text}
        for name, p in proxies.items():
            bp.wait_http_ok(f"http://127.0.0.1:{p['admin']}/readyz", p["proc"], f"streammask ({name})",
                            timeout=args.start_timeout)
            bp.wait_tcp(p["port"], p["proc"], f"streammask ({name})")
        script = json.dumps({"kind": "text", "text": bp.words_text(230), "split_writes": False},
                            separators=(",", ":"))
        lua = os.path.join(tmp, "post.lua")
        with open(lua, "w") as f:
            f.write(LUA % (SECRET, script))
        # Sanity: the secret is masked on both, and /metrics exists only on "on".
        for name, p in proxies.items():
            req = urllib.request.Request(
                f"http://127.0.0.1:{p['port']}/v1/messages", method="POST",
                data=json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [
                    {"role": "user", "content": f"echo {SECRET}"}]}).encode(),
                headers={"content-type": "application/json"})
            with bp.NO_PROXY_OPENER.open(req, timeout=10) as r:
                body = r.read().decode()
            if SECRET in body or "[MASKED:" not in body:
                bp.die(f"sanity request through {name}: the secret was not masked")
        print(f"# streammask observability benchmark  (tmp {tmp}); load average {info['loadavg_start']}",
              flush=True)
        pids = {"mock": [mock.pid]}
        for name, p in proxies.items():
            pids[name] = [p["proc"].pid]
        for name, p in proxies.items():
            bp.run_wrk(args, wrk_bin, lua, p["port"], args.warmup, pids)
        runs = {n: [] for n in proxies}
        for rnd in range(args.rounds):
            order = list(proxies) if rnd % 2 == 0 else list(reversed(proxies))
            for name in order:
                r = bp.run_wrk(args, wrk_bin, lua, proxies[name]["port"], args.duration, pids)
                r["cpu_us_per_req"] = r["cpu_s"][name] / r["requests"] * 1e6
                runs[name].append(r)
                print(f"  round {rnd + 1} {name:<4} {r['rps']:>9.0f} req/s  p50 {r['lat_p50_us']:.0f} µs  "
                      f"p99 {r['lat_p99_us']:.0f} µs  non-2xx {r['non2xx']}  sock-err {r['socket_errors']}  "
                      f"proxy CPU {r['cpu_us_per_req']:.1f} µs/req", flush=True)
                if r["non2xx"] or r["socket_errors"]:
                    bp.die(f"{name} had errors:\n{r['raw']}")
        med = {n: statistics.median(r["rps"] for r in rs) for n, rs in runs.items()}
        cpu = {n: statistics.median(r["cpu_us_per_req"] for r in rs) for n, rs in runs.items()}
        ratio = med["on"] / med["off"]
        # Every request the "on" proxy counted has its audit record (wait for the writer).
        counted = metrics_requests(proxies["on"]["admin"])
        deadline = time.monotonic() + 10
        while True:
            with open(audit) as f:
                records = sum(1 for _ in f)
            if records >= counted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        results.update({"runs": {n: [{k: v for k, v in r.items() if k != "raw"} for r in rs] for n, rs in runs.items()},
                        "median_rps": med, "median_cpu_us_per_req": cpu, "ratio": ratio,
                        "audit_records": records, "requests_on_metrics": counted,
                        "audit_bytes": os.path.getsize(audit),
                        "proxies": {n: {"cmd": p["cmd"], "config": p["config"]} for n, p in proxies.items()}})
        info["loadavg_end"] = bp.loadavg()
        print("\n## summary")
        print(f"machine: {info['nproc']} CPUs, {info['cpu']}, kernel {info['kernel']}, {info['mem']} RAM; {info['wrk']}")
        print(f"command: {info['command']}  (git {info['git']})")
        print(f"wrk:     {runs['on'][0]['cmd']}")
        for n in proxies:
            print(f"{n:<7} median {med[n]:>9,.0f} req/s  [" + ", ".join(f"{r['rps']:,.0f}" for r in runs[n])
                  + f"]  proxy CPU median {cpu[n]:.1f} µs/req")
        spread = {n: (max(r["rps"] for r in rs) - min(r["rps"] for r in rs)) / med[n] for n, rs in runs.items()}
        print(f"ratio on/off (medians): {ratio:.3f}  → metrics + audit cost {100 * (1 - ratio):.1f} % of req/s "
              f"(run-to-run spread: off {100 * spread['off']:.0f} %, on {100 * spread['on']:.0f} %)")
        for n in proxies:
            if n != "off":
                print(f"  {n:<12} req/s ratio to off {med[n] / med['off']:.3f}; proxy CPU per request "
                      f"{cpu[n] / cpu['off']:.3f}× ({cpu[n] - cpu['off']:+.1f} µs/req)")
        # Ratio of medians over paired rounds is noisy on a shared machine: also the median of
        # the per-round ratios (each "on" run against the "off" run next to it).
        paired = statistics.median(a["rps"] / b["rps"] for a, b in zip(runs["on"], runs["off"]))
        results["paired_ratio"] = paired
        print(f"median of per-round ratios on/off: {paired:.3f}")
        print(f"audit:   {records} records ({os.path.getsize(audit) / max(records, 1):.0f} bytes each) for "
              f"{counted:.0f} requests counted on /metrics")
        print(f"load:    {info['loadavg_start']} at start, {info['loadavg_end']} at end")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1, default=str)
        failed = []
        if ratio < 0.95:
            failed.append(f"req/s ratio {ratio:.3f} < 0.95")
        if records != counted:
            failed.append(f"{records} audit records for {counted:.0f} requests")
        print("verdict: " + ("within budget" if not failed else "OUTSIDE BUDGET: " + "; ".join(failed)))
    finally:
        bp.stop_all()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as err:
        bp.die(f"{type(err).__name__}: {err}")
