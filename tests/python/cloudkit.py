"""The mock's cloud endpoints (Bedrock + STS, Vertex + a Google token endpoint) for the tests
that use them: `test_mock_clouds.py` (the mock judged by the SDKs directly) and
`test_clouds.py` (the proxy in front of it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from smtest import MOCK_BIN

AKID = "AKIAMOCKSTATIC0000001"
SECRET = "mockSecretKey/For+Tests0000000000000000"
API_KEY = "bedrock-api-key-mock-1"
WEB_IDENTITY = "web-identity-token-for-the-mock"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class CloudMock:
    def __init__(self, proc: subprocess.Popen, port: int, key: rsa.RSAPrivateKey):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.key = key
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def script(self, scripts) -> None:
        assert self.http.post("/_mock/script", json=scripts).status_code == 200

    def received(self) -> list[dict]:
        return self.http.get("/_mock/received").json()

    def clouds(self) -> dict:
        return self.http.get("/_mock/clouds").json()

    def assertion(self, *, key=None, aud=None, scope=CLOUD_PLATFORM, exp_in=600) -> str:
        now = int(time.time())
        claims = {
            "iss": "mock-sa@p.iam.gserviceaccount.com",
            "scope": scope,
            "aud": aud or f"{self.url}/token",
            "iat": now,
            "exp": now + exp_in,
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256")

    def oauth_token(self, assertion: str | None = None) -> httpx.Response:
        return self.http.post(
            "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion or self.assertion(),
            },
        )



    def service_account(self, path: Path) -> Path:
        """A service-account JSON key whose `token_uri` is this mock's token endpoint."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path.write_text(json.dumps({
            "type": "service_account",
            "project_id": "p-test",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "proxy@p-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }))
        return path


@contextlib.contextmanager
def cloud_mock_process(d: Path, *extra: str) -> Iterator[CloudMock]:
    """A mock with static AWS keys, a Bedrock API key, a fixed web-identity token and an RSA key
    for JWT assertions, plus `extra` flags; killed on exit."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = d / "oauth.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port_file, log = d / "mock.port", d / "mock.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(MOCK_BIN), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
                "--aws-credentials", f"{AKID}:{SECRET}",
                "--bedrock-api-key", API_KEY,
                "--sts-web-identity-token", WEB_IDENTITY,
                "--oauth-public-key", str(pub),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mock did not start: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        m = CloudMock(proc, int(port_file.read_text()), key)
        yield m
        m.http.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
