"""Cost of authentication end to end: wrk against a proxy with `auth.mode = "none"` and one with
`auth.mode = "jwt"` (RS256 and ES256 tokens), same mock upstream, small non-streaming requests.

    export STREAMMASK_HS_CACHE_DIR=~/.cache/streammask-hs
    ~/.cache/streammask-py/venv/bin/python loadtest/bench_auth.py [--duration 10] [--connections 8]

Needs `wrk`, the release binaries in $STREAMMASK_BIN_DIR (default
~/.cache/streammask-target/release) and the test venv (cryptography, PyJWT, httpx). Keys and
tokens are generated at run time (tests/python/authkit.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

import authkit  # noqa: E402
import httpx  # noqa: E402
import smtest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sm-bench-auth-"))
    procs: list[subprocess.Popen] = []
    idp = authkit.IdP()
    try:
        mock_port = smtest.free_port()
        procs.append(subprocess.Popen(
            [str(smtest.MOCK_BIN), "--listen", f"127.0.0.1:{mock_port}", "--threads", "1", "--no-record", "--no-split-writes"],
            stdout=subprocess.DEVNULL))
        rs, es = authkit.SigningKey("RS256"), authkit.SigningKey("ES256")
        idp.publish(rs, es)
        (work / "key").write_text("sk-ant-bench-upstream-key")
        configs = {
            "none": "",
            "jwt": (f'[upstream]\napi_key_file = "{work / "key"}"\n[auth]\nmode = "jwt"\n'
                    f'issuer = "{idp.issuer}"\naudience = "{authkit.AUDIENCE}"\njwks_url = "{idp.jwks_url}"\n'),
        }
        ports = {}
        for name, text in configs.items():
            (work / f"{name}.toml").write_text(text)
            port, admin = smtest.free_port(), smtest.free_port()
            env = dict(os.environ, STREAMMASK_PLACEHOLDER_KEY=smtest.PLACEHOLDER_KEY, RUST_LOG="warn")
            procs.append(subprocess.Popen(
                [str(smtest.PROXY_BIN), "run", "--config", str(work / f"{name}.toml"), "--listen", f"127.0.0.1:{port}",
                 "--admin", f"127.0.0.1:{admin}", "--upstream", f"http://127.0.0.1:{mock_port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports[name] = (port, admin)
        for name, (_, admin) in ports.items():
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"proxy {name} did not become ready")
                time.sleep(0.1)
        body = json.dumps(smtest.user_request("hello there, how are you?"))
        runs = [("none", "none", "sk-ant-caller-key"),
                ("jwt RS256", "jwt", authkit.token(rs, idp.issuer)),
                ("jwt ES256", "jwt", authkit.token(es, idp.issuer))]
        print(f"wrk -t1 -c{args.connections} -d{args.duration}s, POST /v1/messages (non-streaming)")
        for label, proxy, token in runs:
            script = work / "post.lua"
            script.write_text(
                f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                f'wrk.headers["content-type"] = "application/json"\nwrk.headers["authorization"] = "Bearer {token}"\n')
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-s", str(script),
                 f"http://127.0.0.1:{ports[proxy][0]}/v1/messages"], capture_output=True, text=True).stdout
            rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
            lat = re.search(r"Latency\s+(\S+)", out)
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            print(f"{label:10s} {rps.group(1) if rps else '?':>10s} req/s  mean latency {lat.group(1) if lat else '?'}"
                  f"{'  NON-2xx: ' + bad.group(1) if bad else ''}")
    finally:
        for p in procs:
            p.kill()
        idp.close()


if __name__ == "__main__":
    main()
