"""Vertex through the proxy with a token from the GCE metadata server (GKE workload identity).

`gcp_auth` asks `http://metadata.google.internal/computeMetadata/v1/…` (a fixed host), so this
runs inside a private mount and network namespace (`unshare -mn`, started by
`test_clouds.py::test_vertex_token_from_the_metadata_server`): a hosts file there points the
name at 127.0.0.1, where a stub metadata server listens on port 80 and hands out tokens that the
mock's own token endpoint issued. Nothing outside the namespace sees any of it.

Prints one JSON line: the proxy's answer, what the mock saw and what the stub served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cloudkit import cloud_mock_process  # noqa: E402
from smtest import PLACEHOLDER_KEY, PROXY_BIN, free_ports  # noqa: E402


def isolate() -> None:
    hosts = Path(tempfile.mkdtemp()) / "hosts"
    hosts.write_text("127.0.0.1 localhost metadata.google.internal\n")
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def metadata_stub(mock, hits: list[str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.reply(403, "missing Metadata-Flavor")
            if self.path.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
                issued = mock.oauth_token()
                return self.reply(issued.status_code, issued.text, "application/json")
            if self.path == "/computeMetadata/v1/project/project-id":
                return self.reply(200, "p-test")
            self.reply(404, "")

        def reply(self, status: int, body: str, content_type: str = "text/plain"):
            data = body.encode()
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 80), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    isolate()
    work = Path(tempfile.mkdtemp())
    with cloud_mock_process(work) as mock:
        hits: list[str] = []
        stub = metadata_stub(mock, hits)
        port, admin = free_ports(2)
        config = work / "proxy.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\nadmin = "127.0.0.1:{admin}"\n\n'
            f'[upstream]\nurl = "{mock.url}"\n\n[vertex]\nendpoint = "{mock.url}"\n'
        )
        # No service-account file and no gcloud credentials: Application Default Credentials
        # can only come from the metadata server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
        env.update({"STREAMMASK_PLACEHOLDER_KEY": PLACEHOLDER_KEY, "HOME": str(work), "NO_COLOR": "1",
                    "PATH": "/usr/bin:/bin"})
        log = open(work / "proxy.log", "wb")
        proxy = subprocess.Popen([str(PROXY_BIN), "run", "--config", str(config)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise SystemExit("the proxy did not start: " + (work / "proxy.log").read_text())
                time.sleep(0.1)
            path = ("/vertex/v1/projects/p-test/locations/us-east5/publishers/anthropic/models/"
                    "claude-sonnet-4-5@20250929:rawPredict")
            answer = httpx.post(f"http://127.0.0.1:{port}{path}", timeout=60, json={
                "anthropic_version": "vertex-2023-10-16", "max_tokens": 8,
                "messages": [{"role": "user", "content": "from the metadata server"}]})
            records = [r for r in mock.received() if r["path"].startswith("/v1/projects/")]
            print(json.dumps({
                "status": answer.status_code,
                "text": answer.text,
                "auth_kinds": [r.get("auth_kind") for r in records],
                "metadata_hits": hits,
                "clouds": mock.clouds(),
            }))
        finally:
            proxy.kill()
            proxy.wait()
            stub.shutdown()


if __name__ == "__main__":
    main()
