"""Latency of a small request while worst-case bodies are being masked.

Two client threads send, back to back, the worst request body found for masking (an access log
whose every line ends `Authorization: Bearer <JWT>`, ~1.9 MiB: thousands of candidates per MiB,
the shape that was quadratic before), while a third sends small ordinary requests one at a time.
The small requests' p50/p99 are compared with the same requests on an idle proxy, same run, same
proxy process. Target (issue 19): the loaded p99 within 2x of the idle p99.

    export STREAMMASK_HS_CACHE_DIR=~/.cache/streammask-hs
    ~/.cache/streammask-py/venv/bin/python loadtest/bench_hostile.py [--small 400] [--lines 8000] \
        [--offload-threads 0]

Needs the release binaries in $STREAMMASK_BIN_DIR (default ~/.cache/streammask-target/release)
and the test venv (httpx). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "python"))

import httpx  # noqa: E402
import smtest  # noqa: E402


def b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer_log(lines: int) -> str:
    rng = random.Random(7)
    out = []
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    for n in range(lines):
        claims = b64url(json.dumps({"sub": f"user-{n}", "iat": 1700000000 + n, "scope": "read write"}).encode())
        signature = b64url(bytes(rng.randrange(256) for _ in range(32)))
        out.append(
            f'10.0.{n // 256 % 256}.{n % 256} - - [01/Jan/2026:00:00:{n % 60:02}] "GET /api/v1/items/{n} HTTP/1.1" '
            f'200 512 "-" "curl/8" Authorization: Bearer {header}.{claims}.{signature}\n'
        )
    return "".join(out)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def small_requests(url: str, count: int) -> list[float]:
    body = json.dumps({"model": smtest.MODEL, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    headers = {"x-api-key": smtest.API_KEY, "anthropic-version": "2023-06-01",
               "content-type": "application/json"}
    took = []
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            start = time.perf_counter()
            r = client.post(f"{url}/v1/messages", content=body, headers=headers)
            took.append((time.perf_counter() - start) * 1000)
            assert r.status_code == 200, r.text[:200]
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=400, help="small requests per phase")
    ap.add_argument("--lines", type=int, default=8000, help="bearer-log lines per worst-case body")
    ap.add_argument("--offload-threads", type=int, default=0, help="[masking] offload_threads (0: server.threads)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sm-bench-hostile-"))
    procs: list[subprocess.Popen] = []
    try:
        mock_port, port, admin = smtest.free_port(), smtest.free_port(), smtest.free_port()
        procs.append(subprocess.Popen(
            [str(smtest.MOCK_BIN), "--listen", f"127.0.0.1:{mock_port}", "--threads", "1", "--no-record"],
            stdout=subprocess.DEVNULL))
        config = work / "proxy.toml"
        config.write_text(f"[masking]\noffload_threads = {args.offload_threads}\n")
        env = dict(os.environ, STREAMMASK_PLACEHOLDER_KEY=smtest.PLACEHOLDER_KEY, RUST_LOG="warn")
        procs.append(subprocess.Popen(
            [str(smtest.PROXY_BIN), "run", "--config", str(config), "--listen", f"127.0.0.1:{port}",
             "--admin", f"127.0.0.1:{admin}", "--upstream", f"http://127.0.0.1:{mock_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "proxy.log", "wb")))
        url = f"http://127.0.0.1:{port}"
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        smtest.wait_until(ready, timeout=60, what="proxy ready")
        # Worst case: answered with a short echo-free reply so the time is the request side.
        log = bearer_log(args.lines)
        heavy = json.dumps({"model": smtest.MODEL, "max_tokens": 16,
                            "messages": [{"role": "user", "content": [{"type": "text", "text": log}]}]})
        heavy_headers = {"x-api-key": smtest.API_KEY, "anthropic-version": "2023-06-01",
                         "content-type": "application/json",
                         "x-mock-script": smtest.mock_script({"kind": "text", "text": "ok"})}
        small_requests(url, 50)  # warm up
        idle = small_requests(url, args.small)

        stop = threading.Event()
        heavy_done: list[tuple[int, float]] = []

        def hammer():
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    start = time.perf_counter()
                    r = client.post(f"{url}/v1/messages", content=heavy, headers=heavy_headers)
                    heavy_done.append((r.status_code, time.perf_counter() - start))

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both worst-case bodies in flight
        loaded = small_requests(url, args.small)
        stop.set()
        for t in threads:
            t.join()

        statuses = {}
        for status, _ in heavy_done:
            statuses[status] = statuses.get(status, 0) + 1
        heavy_ms = [s * 1000 for _, s in heavy_done]
        print(f"worst-case body: {len(heavy) / 2**20:.2f} MiB ({args.lines} bearer lines), "
              f"{len(heavy_done)} sent, statuses {statuses}, median {statistics.median(heavy_ms):.0f} ms each")
        print(f"offload_threads = {args.offload_threads}, cores = {os.cpu_count()}")
        print("| phase | small requests | p50 ms | p99 ms |")
        print("|---|---|---|---|")
        print(f"| idle | {len(idle)} | {pct(idle, 50):.2f} | {pct(idle, 99):.2f} |")
        print(f"| two worst-case bodies in flight | {len(loaded)} | {pct(loaded, 50):.2f} | {pct(loaded, 99):.2f} |")
        ratio = pct(loaded, 99) / pct(idle, 99)
        print(f"p99 loaded / idle = {ratio:.2f} (target <= 2)")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
