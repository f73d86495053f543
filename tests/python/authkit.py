"""Identity and TLS helpers for the end-to-end suite: keys, tokens, a JWKS/OIDC server, a test
CA with certificates, and a TLS front for the mock upstream.

Every key and certificate is generated here, at test time; nothing private is committed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import smtest

ISSUER_PATH = "/realms/e2e"
AUDIENCE = "streammask-e2e"


# --- signing keys and tokens ---------------------------------------------------------------------

class SigningKey:
    """A private key with its kid and JWS algorithm; `jwk()` is its public JWK."""

    def __init__(self, alg: str = "RS256", kid: str | None = None):
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith(("RS", "PS")):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "ES384":
            self.private = ec.generate_private_key(ec.SECP384R1())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)

    def jwk(self, declare_alg: bool = True) -> dict:
        public = self.private.public_key()
        if self.alg == "EdDSA":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
        else:
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[self.alg].to_jwk(public))
        jwk.update(kid=self.kid, use="sig")
        if declare_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(issuer: str, **overrides: Any) -> dict:
    now = int(time.time())
    base = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice@example.com",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
        "groups": ["engineering"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: SigningKey, issuer: str, headers: dict | None = None, **overrides: Any) -> str:
    t = jwt.encode(claims(issuer, **overrides), key.private, algorithm=key.alg, headers={"kid": key.kid, **(headers or {})})
    smtest.plant(t)
    return t


def unsigned_token(issuer: str, kid: str, **overrides: Any) -> str:
    """`alg: none`, no signature."""
    header = b64u(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    payload = b64u(json.dumps(claims(issuer, **overrides)).encode())
    return f"{header}.{payload}."


def hs256_with_public_key(key: SigningKey, issuer: str, **overrides: Any) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the published public key (PEM)."""
    header = b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64u(json.dumps(claims(issuer, **overrides)).encode())
    import hmac

    sig = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64u(sig)}"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- JWKS / OIDC server ----------------------------------------------------------------------------

class IdP:
    """A loopback identity provider: `/realms/e2e/.well-known/openid-configuration` and
    `/realms/e2e/keys`, counting every JWKS fetch."""

    def __init__(self):
        self.keys: list[SigningKey] = []
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == ISSUER_PATH + "/keys":
                    with idp.lock:
                        idp.jwks_fetches += 1
                        body = {"keys": [k.jwk() for k in idp.keys]}
                elif self.path == ISSUER_PATH + "/.well-known/openid-configuration":
                    with idp.lock:
                        idp.discovery_fetches += 1
                    body = {"issuer": idp.issuer, "jwks_uri": idp.jwks_url}
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}{ISSUER_PATH}"
        self.jwks_url = f"{self.issuer}/keys"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *keys: SigningKey) -> None:
        with self.lock:
            self.keys = list(keys)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- certificates ----------------------------------------------------------------------------------

class CA:
    """A test certificate authority."""

    def __init__(self, name: str = "streammask e2e test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, dns: list[str], ips: list[str] = ()) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for a server."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_server_cert(ca: CA, directory: Path, name: str, dns=("localhost",), ips=("127.0.0.1",)) -> tuple[Path, Path]:
    cert, key = ca.issue(list(dns), list(ips))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    return cert_path, key_path


# --- TLS front for the mock upstream ---------------------------------------------------------------

class TlsFront:
    """Terminates TLS on 127.0.0.1 and relays bytes to `backend_port` (the mock), recording the
    SNI name of every handshake. Lets the mock (plain HTTP) stand in for a TLS upstream."""

    def __init__(self, cert: Path, key: Path, backend_port: int):
        self.backend_port = backend_port
        self.sni: list[str | None] = []
        self.handshakes_ok = 0
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.set_alpn_protocols(["http/1.1"])

        def on_sni(sock, name, ctx):
            self.sni.append(name)

        self.ctx.sni_callback = on_sni
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("TLS front did not start")

    async def _serve(self, reader, writer):
        self.handshakes_ok += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        def stop():
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)
