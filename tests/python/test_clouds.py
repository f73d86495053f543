"""Claude through Amazon Bedrock and Google Vertex AI, with the proxy in between (issue 13).

The upstream is the mock's Bedrock runtime (which verifies the SigV4 signature of every request
and streams AWS event-stream frames cut at random byte offsets) and its Vertex endpoint (which
takes only tokens its own OAuth token endpoint issued). The proxy holds the cloud credentials:
static AWS keys from its environment, a web-identity token exchanged at the mock's STS, a
Bedrock API key, and a service-account key whose `token_uri` is the mock's token endpoint.
Clients are the real `AnthropicBedrock`/`AnthropicVertex` SDK clients and the real Claude Code
CLI in Bedrock and Vertex modes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import pytest
from botocore.eventstream import EventStreamBuffer

from cloudkit import AKID, API_KEY, MODEL, SECRET, WEB_IDENTITY, CloudMock, cloud_mock_process
from smtest import (
    AWS_KEY_ID,
    CURL_PIPE_SH,
    GITHUB_TOKEN,
    GITHUB_TOKEN_2,
    PG_PASSWORD,
    PG_URI,
    has_placeholder_for,
    run_claude,
    wait_until,
)
from test_reload import OwnProxy

VERTEX_MODEL = "claude-sonnet-4-5@20250929"
# The mock issues OAuth tokens for 23 s: `gcp_auth` renews a token 20 s before it expires, so a
# token is reused for 3 s and then replaced. STS credentials last 303 s: the proxy refreshes
# them 300 s before expiry, so a refresh is due 3 s after each exchange.
TOKEN_TTL = 23
STS_TTL = 303
# No AWS or Google credentials from the machine running the tests reach a proxy.
# (None: the variable is removed from the proxy's environment.)
CLEAN_ENV = {
    **{name: None for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS",
        "GOOGLE_APPLICATION_CREDENTIALS")},
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    # The first-party API key (the proxies below hold one, as [auth] requires).
    "E2E_CLOUD_UPSTREAM_KEY": "sk-ant-api03-e2e-cloud-upstream-key",
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory) -> CloudMock:
    d = tmp_path_factory.mktemp("clouds-mock")
    with cloud_mock_process(
        d, "--oauth-token-ttl-secs", str(TOKEN_TTL), "--sts-ttl-secs", str(STS_TTL)
    ) as m:
        yield m


@pytest.fixture
def mock(cloud) -> CloudMock:
    assert cloud.http.post("/_mock/reset").status_code == 200
    return cloud


def cloud_config(mock: CloudMock, d: Path, extra: str = "") -> str:
    account = mock.service_account(d / "service-account.json")
    return (
        f'[upstream]\nurl = "{mock.url}"\napi_key_env = "E2E_CLOUD_UPSTREAM_KEY"\n\n'
        f'[bedrock]\nregion = "us-east-1"\nendpoint = "{mock.url}"\n\n'
        f'[vertex]\nendpoint = "{mock.url}"\ncredentials_file = "{account}"\n\n' + extra
    )


@pytest.fixture(scope="module")
def cloud_proxy(cloud, tmp_path_factory) -> OwnProxy:
    """Static AWS keys in the environment; the service account for Vertex."""
    d = tmp_path_factory.mktemp("clouds-proxy")
    audit = f'[audit]\nsink = "file"\npath = "{d / "audit.jsonl"}"\n'
    proxy = OwnProxy(d, cloud.url, cloud_config(cloud, d, audit), "clouds",
                     env={**CLEAN_ENV, "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    proxy.audit_path = d / "audit.jsonl"
    yield proxy
    proxy.stop()


def bedrock_client(proxy: OwnProxy, **kw) -> anthropic.AnthropicBedrock:
    # The client signs with keys of its own (the SDK insists on signing): the proxy drops that
    # signature and signs again with the organisation's credentials.
    creds = kw or {"aws_access_key": "AKIACLIENTOWN0000000", "aws_secret_key": "client-own-secret"}
    return anthropic.AnthropicBedrock(
        aws_region="us-east-1", base_url=f"{proxy.url}/bedrock", max_retries=0, **creds
    )


def vertex_client(proxy: OwnProxy, token: str = "caller-token") -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(
        project_id="p-test", region="us-east5", base_url=f"{proxy.url}/vertex/v1",
        access_token=token, max_retries=0,
    )


def ask(client, text: str, model: str, stream: bool) -> str:
    request = dict(model=model, max_tokens=64, messages=[{"role": "user", "content": text}])
    if stream:
        with client.messages.stream(**request) as s:
            return "".join(s.text_stream)
    return "".join(b.text for b in client.messages.create(**request).content if b.type == "text")


def audited(proxy: OwnProxy, provider: str) -> list[dict]:
    """The proxy's audit records of `provider`, once at least one is written."""
    def records():
        if not proxy.audit_path.exists():
            return None
        lines = proxy.audit_path.read_text().splitlines()
        found = [json.loads(line) for line in lines if line.strip()]
        return [r for r in found if r.get("provider") == provider] or None
    return wait_until(records, timeout=10, what=f"an audit record of {provider}")


def one_api_request(mock: CloudMock) -> dict:
    records = [r for r in mock.received() if r["path"].startswith(("/model/", "/v1/projects/"))]
    assert len(records) == 1, [r["path"] for r in records]
    return records[0]


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_bedrock_sdk_request_and_reply_are_masked_and_signed_by_the_proxy(cloud_proxy, mock, stream):
    secret_reply = f"Here it is: GITHUB_TOKEN={GITHUB_TOKEN_2} and nothing else."
    mock.script({"kind": "text", "text": secret_reply, "max_delta": 3})
    text = ask(bedrock_client(cloud_proxy), f"my token is {GITHUB_TOKEN}", MODEL, stream)
    assert GITHUB_TOKEN_2 not in text and has_placeholder_for(text, GITHUB_TOKEN_2), text
    assert text.startswith("Here it is:") and text.endswith("nothing else."), text
    rec = one_api_request(mock)
    suffix = "invoke-with-response-stream" if stream else "invoke"
    assert rec["path"] == f"/model/{MODEL}/{suffix}"
    assert GITHUB_TOKEN not in rec["body"] and has_placeholder_for(rec["body"], GITHUB_TOKEN)
    # Signed by the proxy with its own key (the mock verified the signature over the masked body).
    assert (rec["auth_kind"], rec["aws_access_key_id"], rec["aws_region"]) == ("sigv4", AKID, "us-east-1")
    body = json.loads(rec["body"])
    assert "model" not in body and body["anthropic_version"]
    metrics = cloud_proxy.metrics()
    assert 'provider="bedrock"' in metrics
    records = audited(cloud_proxy, "bedrock")
    assert GITHUB_TOKEN not in json.dumps(records) and GITHUB_TOKEN_2 not in json.dumps(records)
    assert records[-1]["endpoint"] == "messages" and records[-1]["model"] == MODEL


def test_bedrock_clean_request_is_forwarded_byte_for_byte(cloud_proxy, mock):
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "nothing secret here"}]})
    r = httpx.post(f"{cloud_proxy.url}/bedrock/model/{MODEL}/invoke", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert one_api_request(mock)["body"] == body


def frames_of(raw: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


def test_bedrock_corrupt_frame_ends_the_stream_with_an_exception(cloud_proxy, mock):
    mock.script({"kind": "text", "text": "first words then more words after", "max_delta": 4,
                 "corrupt_frame_after": 4})
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]})
    r = httpx.post(f"{cloud_proxy.url}/bedrock/model/{MODEL}/invoke-with-response-stream",
                   content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/vnd.amazon.eventstream")
    frames = frames_of(r.content)  # botocore checks every length and CRC the proxy wrote
    last = frames[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "internalServerException"
    assert b"corrupt" in last.payload
    assert all(f.headers[":message-type"] == "event" for f in frames[:-1])


def test_bedrock_refuses_what_the_mock_would_not_see_signed(cloud, tmp_path):
    """A proxy without AWS credentials answers 502 in the Anthropic shape, forwarding nothing."""
    cloud.http.post("/_mock/reset")
    proxy = OwnProxy(tmp_path, cloud.url, cloud_config(cloud, tmp_path), "no-aws", env=CLEAN_ENV)
    try:
        r = httpx.post(f"{proxy.url}/bedrock/model/{MODEL}/invoke", json={"messages": []}, timeout=60)
        assert r.status_code == 502, r.text
        error = r.json()
        assert error["type"] == "error" and "Amazon Bedrock" in error["error"]["message"]
        assert not [rec for rec in cloud.received() if rec["path"].startswith("/model/")]
    finally:
        proxy.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["rawPredict", "streamRawPredict"])
def test_vertex_sdk_request_and_reply_are_masked_with_the_proxys_token(cloud_proxy, mock, stream):
    mock.script({"kind": "text", "text": f"Use {PG_URI} to connect.", "max_delta": 2})
    text = ask(vertex_client(cloud_proxy), f"the db password is {PG_PASSWORD}", VERTEX_MODEL, stream)
    assert PG_PASSWORD not in text and text.startswith("Use ") and text.endswith(" to connect."), text
    rec = one_api_request(mock)
    method = "streamRawPredict" if stream else "rawPredict"
    assert rec["path"] == (
        f"/v1/projects/p-test/locations/us-east5/publishers/anthropic/models/{VERTEX_MODEL}:{method}"
    )
    assert rec["auth_kind"] == "google_oauth"
    assert PG_PASSWORD not in rec["body"]
    # The caller's own bearer token stays at the proxy.
    assert "caller-token" not in json.dumps(rec["headers"])
    records = audited(cloud_proxy, "vertex")
    assert PG_PASSWORD not in json.dumps(records) and records[-1]["model"] == VERTEX_MODEL


def test_vertex_token_is_cached_then_renewed_before_it_expires(cloud_proxy, mock):
    client = vertex_client(cloud_proxy)
    issued = mock.clouds()["oauth_tokens_issued"]
    ask(client, "one", VERTEX_MODEL, False)
    ask(client, "two", VERTEX_MODEL, False)
    after_two = mock.clouds()["oauth_tokens_issued"]
    assert after_two - issued <= 1, "a fresh token is not fetched for every request"
    time.sleep(TOKEN_TTL - 20 + 1)  # past gcp_auth's renewal point
    ask(client, "three", VERTEX_MODEL, False)
    assert mock.clouds()["oauth_tokens_issued"] == after_two + 1
    assert mock.clouds()["vertex_auth_failures"] == 0


def test_web_identity_credentials_come_from_sts_and_are_refreshed_ahead_of_expiry(cloud, tmp_path):
    cloud.http.post("/_mock/reset")
    token_file = tmp_path / "web-identity-token"
    token_file.write_text(WEB_IDENTITY)
    env = {**CLEAN_ENV, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
           "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/streammask",
           "AWS_ENDPOINT_URL_STS": cloud.url, "AWS_REGION": "us-east-1"}
    proxy = OwnProxy(tmp_path, cloud.url, cloud_config(cloud, tmp_path), "irsa", env=env)
    try:
        client = bedrock_client(proxy)
        ask(client, "first", MODEL, False)
        assert cloud.clouds()["sts_calls"] == 1
        first_key = cloud.received()[-1]["aws_access_key_id"]
        assert first_key.startswith("ASIA")
        time.sleep(STS_TTL - 300 + 1)
        # Due for refresh but still valid: signed with the current key, refresh in background.
        ask(client, "second", MODEL, True)
        wait_until(lambda: cloud.clouds()["sts_calls"] == 2, timeout=20, what="the background refresh")
        ask(client, "third", MODEL, False)
        keys = [r["aws_access_key_id"] for r in cloud.received() if r["path"].startswith("/model/")]
        assert keys[:2] == [first_key, first_key] and keys[2] != first_key, keys
        assert cloud.clouds()["bedrock_auth_failures"] == 0
    finally:
        proxy.stop()


def test_bedrock_api_key_replaces_signing(cloud, tmp_path):
    cloud.http.post("/_mock/reset")
    proxy = OwnProxy(tmp_path, cloud.url, cloud_config(cloud, tmp_path), "bedrock-key",
                     env={**CLEAN_ENV, "AWS_BEARER_TOKEN_BEDROCK": API_KEY})
    try:
        assert ask(bedrock_client(proxy), "keyed", MODEL, False)
        assert one_api_request(cloud)["auth_kind"] == "bedrock_api_key"
        assert API_KEY not in proxy.log_text()
    finally:
        proxy.stop()


CALLER_KEY = "sm-e2e-cloud-caller-key-0123456789abcdef"


@pytest.fixture(scope="module")
def authed_proxy(cloud, tmp_path_factory) -> OwnProxy:
    """Callers must present a static key: in Bedrock mode as the Bedrock API key the client
    sends (`AWS_BEARER_TOKEN_BEDROCK`, `api_key=`), in Vertex mode as the access token
    (`access_token=`) or a custom `Authorization` header (Claude Code)."""
    d = tmp_path_factory.mktemp("clouds-authed")
    digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    auth = (f'[auth]\nmode = "static_keys"\n\n[[auth.static_keys]]\nsubject = "ci"\n'
            f'sha256 = "{digest}"\ngroups = ["eng"]\n')
    proxy = OwnProxy(d, cloud.url, cloud_config(cloud, d, auth), "clouds-authed",
                     env={**CLEAN_ENV, "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    yield proxy
    proxy.stop()


def test_callers_authenticate_in_both_modes(authed_proxy, mock):
    with pytest.raises(anthropic.AuthenticationError):
        ask(vertex_client(authed_proxy, "wrong"), "x", VERTEX_MODEL, False)
    with pytest.raises(anthropic.AuthenticationError):
        ask(bedrock_client(authed_proxy, api_key="wrong"), "x", MODEL, False)
    assert not [r for r in mock.received() if r["path"].startswith(("/model/", "/v1/"))]
    assert ask(vertex_client(authed_proxy, CALLER_KEY), "vertex ok", VERTEX_MODEL, True) == "vertex ok"
    assert ask(bedrock_client(authed_proxy, api_key=CALLER_KEY), "bedrock ok", MODEL, True) == "bedrock ok"
    sent = json.dumps([r["headers"] for r in mock.received()])
    assert CALLER_KEY not in sent, "the caller's key went upstream"


# --- The real Claude Code CLI -------------------------------------------------------------------

MODES = {
    "bedrock": lambda url: {
        "CLAUDE_CODE_USE_BEDROCK": "1", "ANTHROPIC_BEDROCK_BASE_URL": f"{url}/bedrock",
        "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1", "AWS_REGION": "us-east-1",
        "AWS_BEARER_TOKEN_BEDROCK": CALLER_KEY,
    },
    "vertex": lambda url: {
        "CLAUDE_CODE_USE_VERTEX": "1", "ANTHROPIC_VERTEX_BASE_URL": f"{url}/vertex/v1",
        "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1", "ANTHROPIC_VERTEX_PROJECT_ID": "p-test",
        "CLOUD_ML_REGION": "us-east5", "ANTHROPIC_CUSTOM_HEADERS": f"Authorization: Bearer {CALLER_KEY}",
    },
}


def claude_in(mode: str, proxy: OwnProxy, prompt: str, tmp_path: Path, *args: str):
    return run_claude("http://127.0.0.1:9", prompt, tmp_path, *args, api_key=None,
                      session_id=str(uuid.uuid4()), extra_env=MODES[mode](proxy.url))


def model_requests(mock: CloudMock) -> list[dict]:
    return [r for r in mock.received() if r["path"].startswith(("/model/", "/v1/projects/"))]


@pytest.mark.claude_code
@pytest.mark.parametrize("mode", ["bedrock", "vertex"])
def test_claude_code_reads_a_dotenv_and_no_secret_crosses_either_way(authed_proxy, mock, tmp_path, mode):
    project = tmp_path / "project"
    project.mkdir()
    marker = f"read-ok-{mode}"
    env_file = project / ".env"
    env_file.write_text(f"DATABASE_URL={PG_URI}\nGITHUB_TOKEN={GITHUB_TOKEN_2}\n"
                        f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}\nE2E_MARKER={marker}\n")
    mock.script([
        {"match": {"has_tools": True, "body_lacks": marker}, "kind": "tool_use",
         "text": "Let me read the file.", "tool": {"name": "Read", "input": {"file_path": str(env_file)}}},
        # The model "repeats" a secret in its reply: it must not reach Claude Code.
        {"match": {"has_tools": True, "body_contains": marker}, "kind": "text", "max_delta": 3,
         "text": f"It configures a database, GitHub and AWS; the token is {GITHUB_TOKEN}. e2e-done"},
    ])
    out = claude_in(mode, authed_proxy, "What does the .env file configure?", tmp_path, "--allowedTools", "Read")
    stdout = out.stdout.decode(errors="replace")
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    assert "e2e-done" in stdout, stdout[-2000:]
    assert GITHUB_TOKEN not in stdout and has_placeholder_for(stdout, GITHUB_TOKEN), stdout[-2000:]
    requests = model_requests(mock)
    assert requests, "Claude Code sent nothing through the proxy"
    for rec in mock.received():
        for secret in (PG_PASSWORD, GITHUB_TOKEN_2, AWS_KEY_ID, CALLER_KEY):
            assert secret not in rec["body"] and secret not in json.dumps(rec["headers"]), rec["path"]
    with_result = [r for r in requests if marker in r["body"]]
    assert with_result, "the tool_result never came back (Read did not run?)"
    assert has_placeholder_for(with_result[-1]["body"], GITHUB_TOKEN_2)
    kind = {"bedrock": "sigv4", "vertex": "google_oauth"}[mode]
    assert {r["auth_kind"] for r in requests} == {kind}


@pytest.mark.claude_code
@pytest.mark.parametrize("mode", ["bedrock", "vertex"])
def test_claude_code_denylisted_tool_call_becomes_text(authed_proxy, mock, tmp_path, mode):
    mock.script({"match": {"has_tools": True}, "kind": "tool_use", "text": "Installing now.",
                 "tool": {"name": "Bash", "input": {"command": CURL_PIPE_SH, "description": "Install"}}})
    out = claude_in(mode, authed_proxy, "Install the tool", tmp_path, "--allowedTools", "Bash")
    stdout = out.stdout.decode(errors="replace")
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    # `claude -p` prints the reply's last text block: the proxy's notice that replaced the call.
    assert "was blocked" in stdout and "`shell-download-to-interpreter`" in stdout, stdout[-2000:]
    # Claude Code never ran it, so no tool_result went back.
    assert not [r for r in model_requests(mock) if "tool_result" in r["body"]]


# --- Model policy, encoded ids, count-tokens, start-up line --------------------------------------

def test_model_policy_applies_to_the_model_in_the_path(cloud, tmp_path):
    cloud.http.post("/_mock/reset")
    digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    extra = (f'[auth]\nmode = "static_keys"\n\n[[auth.static_keys]]\nsubject = "ci"\n'
             f'sha256 = "{digest}"\ngroups = ["eng"]\n\n'
             '[[profiles]]\nname = "eng"\ngroups = ["eng"]\n'
             'allowed_models = ["us.anthropic.claude-haiku-*", "claude-haiku-*"]\n')
    proxy = OwnProxy(tmp_path, cloud.url, cloud_config(cloud, tmp_path, extra), "models",
                     env={**CLEAN_ENV, "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        with pytest.raises(anthropic.PermissionDeniedError, match="may not use this model"):
            ask(bedrock_client(proxy, api_key=CALLER_KEY), "x", MODEL, False)
        with pytest.raises(anthropic.PermissionDeniedError, match="may not use this model"):
            ask(vertex_client(proxy, CALLER_KEY), "x", VERTEX_MODEL, True)
        # Percent-encoded, the id is still the model it names.
        encoded = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
        r = httpx.post(f"{proxy.url}/bedrock/model/{encoded}/invoke", json={"messages": []},
                       headers={"authorization": f"Bearer {CALLER_KEY}"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert not [rec for rec in cloud.received() if rec["path"].startswith(("/model/", "/v1/"))]
        haiku = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
        assert ask(bedrock_client(proxy, api_key=CALLER_KEY), "haiku ok", haiku, False) == "haiku ok"
        assert ask(vertex_client(proxy, CALLER_KEY), "v ok", "claude-haiku-4-5@20251001", False) == "v ok"
    finally:
        proxy.stop()


def test_encoded_model_ids_and_arns_are_forwarded_as_written_and_signed(cloud_proxy, mock):
    arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123"
    for model in ["us.anthropic.claude-sonnet-4-5-20250929-v1%3A0", arn]:
        r = httpx.post(f"{cloud_proxy.url}/bedrock/model/{model}/invoke",
                       json={"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200, r.text
    paths = [r["path"] for r in mock.received()]
    assert paths == ["/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke", f"/model/{arn}/invoke"]
    assert mock.clouds()["bedrock_auth_failures"] == 0


def test_count_tokens_bodies_are_masked_in_both_providers(cloud_proxy, mock):
    import base64
    inner = {"anthropic_version": "bedrock-2023-05-31",
             "messages": [{"role": "user", "content": f"token {GITHUB_TOKEN}"}]}
    wrapped = {"input": {"invokeModel": {"body": base64.b64encode(json.dumps(inner).encode()).decode()}}}
    r = httpx.post(f"{cloud_proxy.url}/bedrock/model/{MODEL}/count-tokens", json=wrapped, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["inputTokens"] > 0
    vertex = ("/vertex/v1/projects/p-test/locations/us-east5/publishers/anthropic/models/"
              "count-tokens:rawPredict")
    r = httpx.post(cloud_proxy.url + vertex, timeout=30, json={
        "anthropic_version": "vertex-2023-10-16", "model": VERTEX_MODEL,
        "messages": [{"role": "user", "content": f"token {GITHUB_TOKEN}"}]})
    assert r.status_code == 200, r.text
    bedrock_rec, vertex_rec = [r for r in mock.received() if r["path"].startswith(("/model/", "/v1/"))]
    sent = json.loads(base64.b64decode(json.loads(bedrock_rec["body"])["input"]["invokeModel"]["body"]))
    assert GITHUB_TOKEN not in json.dumps(sent) and has_placeholder_for(json.dumps(sent), GITHUB_TOKEN)
    assert GITHUB_TOKEN not in vertex_rec["body"] and has_placeholder_for(vertex_rec["body"], GITHUB_TOKEN)
    assert vertex_rec["auth_kind"] == "google_oauth" and bedrock_rec["auth_kind"] == "sigv4"


def test_startup_line_names_the_three_base_urls(cloud_proxy):
    log = cloud_proxy.log_text()
    base = cloud_proxy.url
    for expected in (f"ANTHROPIC_BASE_URL={base}", f"ANTHROPIC_BEDROCK_BASE_URL={base}/bedrock",
                     f"ANTHROPIC_VERTEX_BASE_URL={base}/vertex/v1"):
        assert expected in log, log[-2000:]


# --- Other sources of AWS credentials: a profile, container and instance metadata ------------------

class MetadataStub:
    """ECS container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI`) and EC2 instance metadata
    (IMDSv2: token, role name, role credentials) handing out the mock's static keys."""

    def __init__(self, cloud: CloudMock):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        stub = self
        self.hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: str, status: int = 200):
                data = body.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                stub.hits.append("PUT " + self.path)
                ttl = self.headers.get("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                data = b"imds-session-token"
                self.send_response(200)
                self.send_header("x-aws-ec2-metadata-token-ttl-seconds", ttl)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.hits.append("GET " + self.path)
                creds = stub.temporary_credentials()
                if self.path.startswith("/latest/meta-data/iam/security-credentials/streammask"):
                    if self.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
                        return self._send("", 401)
                    return self._send(json.dumps(creds))
                if self.path.startswith("/latest/meta-data/iam/security-credentials"):
                    return self._send("streammask")
                if self.path == "/container-credentials":
                    keys = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")
                    return self._send(json.dumps({k: creds[k] for k in keys}))
                self._send("", 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

        self.cloud = cloud

    def temporary_credentials(self) -> dict:
        """Session credentials the mock's STS issued (so the mock accepts their signatures), in
        the metadata services' JSON shape."""
        import xml.etree.ElementTree as ET
        reply = httpx.post(self.cloud.url + "/", timeout=10, data={
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": "arn:aws:iam::123456789012:role/streammask", "RoleSessionName": "stub",
            "WebIdentityToken": WEB_IDENTITY})
        assert reply.status_code == 200, reply.text
        ns = "{https://sts.amazonaws.com/doc/2011-06-15/}"
        got = ET.fromstring(reply.text).find(f"{ns}AssumeRoleWithWebIdentityResult/{ns}Credentials")
        field = lambda name: got.find(ns + name).text  # noqa: E731
        return {"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": field("Expiration"),
                "AccessKeyId": field("AccessKeyId"), "SecretAccessKey": field("SecretAccessKey"),
                "Token": field("SessionToken"), "Expiration": field("Expiration")}

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("source", ["profile", "container", "instance"])
def test_credentials_from_a_profile_the_container_or_the_instance(cloud, tmp_path, source):
    cloud.http.post("/_mock/reset")
    stub = MetadataStub(cloud)
    env = dict(CLEAN_ENV)
    extra = ""
    if source == "profile":
        credentials = tmp_path / "credentials"
        credentials.write_text(f"[claude]\naws_access_key_id = {AKID}\naws_secret_access_key = {SECRET}\n")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(credentials)
        config = cloud_config(cloud, tmp_path).replace('[bedrock]\n', '[bedrock]\nprofile = "claude"\n')
    else:
        config = cloud_config(cloud, tmp_path)
        if source == "container":
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = stub.url + "/container-credentials"
        else:
            env["AWS_EC2_METADATA_DISABLED"] = "false"
            env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = stub.url
    proxy = OwnProxy(tmp_path, cloud.url, config + extra, f"aws-{source}", env=env)
    try:
        assert ask(bedrock_client(proxy), f"from {source}", MODEL, False) == f"from {source}"
        rec = one_api_request(cloud)
        assert rec["auth_kind"] == "sigv4"
        assert rec["aws_access_key_id"] == (AKID if source == "profile" else rec["aws_access_key_id"])
        if source != "profile":
            # Session credentials from the metadata service, with their session token.
            assert rec["aws_access_key_id"].startswith("ASIA")
        if source == "container":
            assert "GET /container-credentials" in stub.hits
        if source == "instance":
            assert any(h.startswith("PUT /latest/api/token") for h in stub.hits), stub.hits
        # The proxy's log names no key id and no session token (the libraries' own logs,
        # which print them, are off by default).
        log = proxy.log_text()
        assert rec["aws_access_key_id"] not in log and "imds-session-token" not in log
    finally:
        proxy.stop()
        stub.close()


def test_vertex_token_from_the_metadata_server():
    """GKE workload identity / GCE: no key file, the token comes from the metadata server (run
    in a private namespace where metadata.google.internal is a local stub, see
    gce_metadata_run.py)."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parent / "gce_metadata_run.py"
    run = subprocess.run(["unshare", "--mount", "--net", sys.executable, str(script)],
                         capture_output=True, timeout=240)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    result = json.loads(run.stdout.decode().strip().splitlines()[-1])
    assert result["status"] == 200, result
    assert "from the metadata server" in result["text"]
    assert result["auth_kinds"] == ["google_oauth"]
    assert any(hit.endswith("/service-accounts/default/token") for hit in result["metadata_hits"]), result
    assert result["clouds"]["vertex_auth_failures"] == 0


def test_jwt_callers_in_both_modes(cloud, idp, tmp_path):
    """OIDC callers present their JWT the same way as a static key: as the Bedrock API key or
    as the Vertex access token; an expired or foreign token is refused before anything goes
    upstream, and the token itself never goes upstream."""
    import authkit
    cloud.http.post("/_mock/reset")
    key = authkit.SigningKey("RS256")
    stranger = authkit.SigningKey("RS256")
    idp.publish(key)
    auth = (f'[auth]\nmode = "jwt"\nissuer = "{idp.issuer}"\naudience = "{authkit.AUDIENCE}"\n'
            f'jwks_url = "{idp.jwks_url}"\n')
    proxy = OwnProxy(tmp_path, cloud.url, cloud_config(cloud, tmp_path, auth), "clouds-jwt",
                     env={**CLEAN_ENV, "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        good = authkit.token(key, idp.issuer)
        for bad in (authkit.token(key, idp.issuer, exp=int(time.time()) - 600),
                    authkit.token(stranger, idp.issuer)):
            with pytest.raises(anthropic.AuthenticationError):
                ask(bedrock_client(proxy, api_key=bad), "x", MODEL, False)
            with pytest.raises(anthropic.AuthenticationError):
                ask(vertex_client(proxy, bad), "x", VERTEX_MODEL, False)
        assert not [r for r in cloud.received() if r["path"].startswith(("/model/", "/v1/"))]
        assert ask(bedrock_client(proxy, api_key=good), "jwt bedrock", MODEL, True) == "jwt bedrock"
        assert ask(vertex_client(proxy, good), "jwt vertex", VERTEX_MODEL, False) == "jwt vertex"
        assert good not in json.dumps([r["headers"] for r in cloud.received()])
        assert 'subject="alice@example.com"' in proxy.log_text()
    finally:
        proxy.stop()
