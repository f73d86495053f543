"""The mock's cloud endpoints, talked to directly (no proxy), with the official SDK clients.

The mock judges the proxy's upstream authentication for Amazon Bedrock (SigV4) and Vertex AI
(Google OAuth tokens). These tests check the judge itself: botocore-signed requests from
`anthropic.AnthropicBedrock` pass and altered ones fail, the STS and token endpoints hand out
credentials the SDKs and the mock agree on, and Bedrock's event stream decodes with botocore.

The module starts its own mock (the session `mock_server` fixture takes no flags), with static
AWS keys, a Bedrock API key, a fixed web-identity token and an RSA key for JWT assertions.
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import anthropic
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import rsa

from cloudkit import AKID, API_KEY, MODEL, SECRET, WEB_IDENTITY, CloudMock, cloud_mock_process

STS_NS = "{https://sts.amazonaws.com/doc/2011-06-15/}"


@pytest.fixture(scope="module")
def cloud_mock(tmp_path_factory) -> CloudMock:
    with cloud_mock_process(tmp_path_factory.mktemp("mock-clouds")) as m:
        yield m


@pytest.fixture
def mock(cloud_mock) -> CloudMock:
    assert cloud_mock.http.post("/_mock/reset").status_code == 200
    return cloud_mock


def bedrock(m: CloudMock, **kw) -> anthropic.AnthropicBedrock:
    creds = kw or {"aws_access_key": AKID, "aws_secret_key": SECRET}
    return anthropic.AnthropicBedrock(
        aws_region="us-east-1", base_url=m.url, max_retries=0, **creds
    )


def ask(client, text="hello from the test", **kw):
    return client.messages.create(
        model=kw.pop("model", MODEL),
        max_tokens=64,
        messages=[{"role": "user", "content": text}],
        **kw,
    )


def stream_text(client, model=MODEL, text="x") -> str:
    with client.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": text}]
    ) as s:
        return "".join(s.text_stream)


# --- Bedrock -----------------------------------------------------------------------------------

def test_bedrock_sigv4_invoke(mock):
    msg = ask(bedrock(mock), "echo this back")
    assert msg.content[0].text == "echo this back"
    assert msg.model == MODEL
    [rec] = mock.received()
    assert rec["path"] == f"/model/{MODEL}/invoke"
    assert rec["auth_kind"] == "sigv4"
    assert rec["aws_region"] == "us-east-1"
    assert rec["aws_access_key_id"] == AKID
    assert "auth_error" not in rec
    body = json.loads(rec["body"])
    assert "model" not in body and "stream" not in body and body["anthropic_version"]


def test_bedrock_sigv4_stream_decodes_with_botocore(mock):
    text = "The key is sk-ant-api03-" + "Ab9" * 30 + " — ünïcode 🎉 done."
    mock.script({"kind": "thinking_text", "thinking": "hmm", "text": text, "max_delta": 3})
    assert stream_text(bedrock(mock)) == text
    [rec] = mock.received()
    assert rec["path"] == f"/model/{MODEL}/invoke-with-response-stream"
    assert rec["auth_kind"] == "sigv4"


def test_bedrock_stream_error_becomes_an_sdk_error(mock):
    mock.script({"kind": "text", "text": "abcdef", "sse_error_after_events": 4, "message": "busy now"})
    with pytest.raises(anthropic.APIStatusError, match="busy now"):
        stream_text(bedrock(mock))


def test_bedrock_corrupt_frame_fails_the_stream(mock):
    mock.script({"kind": "text", "text": "abcdefghij", "corrupt_frame_after": 3})
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        stream_text(bedrock(mock))


def test_bedrock_api_key(mock):
    msg = ask(bedrock(mock, api_key=API_KEY), "keyed")
    assert msg.content[0].text == "keyed"
    assert mock.received()[0]["auth_kind"] == "bedrock_api_key"
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(bedrock(mock, api_key="wrong-key"))


def signed(method: str, url: str, body: bytes, headers=None, ak=AKID, sk=SECRET, token=None):
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {"content-type": "application/json"})
    SigV4Auth(Credentials(ak, sk, token), "bedrock", "us-west-2").add_auth(req)
    return dict(req.headers.items())


def test_bedrock_refuses_unsigned_tampered_and_unknown(mock):
    url = f"{mock.url}/model/{MODEL}/invoke"
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post(headers, data=body):
        return httpx.post(url, content=data, headers=headers, timeout=10)

    r = post({"content-type": "application/json"})
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    assert "message" in r.json()

    h = signed("POST", url, body)
    assert post(h).status_code == 200  # the same request, untouched, passes
    r = post(h, body.replace(b"hi", b"ho"))
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    r = post({**h, "content-type": "text/plain"})
    assert r.headers["x-amzn-ErrorType"] == "InvalidSignatureException"

    r = post(signed("POST", url, body, ak="AKIAUNKNOWN000000000"))
    assert r.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    r = post(signed("POST", url, body, sk="not-the-secret"))
    assert r.headers["x-amzn-ErrorType"] == "InvalidSignatureException"

    recs = mock.received()
    assert [r.get("auth_kind") for r in recs] == ["none"] + ["sigv4"] * 5
    assert recs[1]["aws_region"] == "us-west-2"
    assert recs[2]["auth_error"].startswith("InvalidSignatureException")
    assert mock.clouds()["bedrock_auth_failures"] == 5


def test_bedrock_count_tokens_and_inference_profiles(mock):
    inner = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8,
                        "messages": [{"role": "user", "content": "count me"}]}).encode()
    body = json.dumps({"input": {"invokeModel": {"body": base64.b64encode(inner).decode()}}}).encode()
    url = f"{mock.url}/model/{MODEL}/count-tokens"
    r = httpx.post(url, content=body, headers=signed("POST", url, body), timeout=10)
    assert r.status_code == 200 and r.json() == {"inputTokens": len(inner) // 4}
    url = f"{mock.url}/inference-profiles?maxResults=1000&typeEquals=SYSTEM_DEFINED"
    r = httpx.get(url, headers=signed("GET", url, b"", headers={}), timeout=10)
    assert r.status_code == 200 and r.json() == {"inferenceProfileSummaries": []}
    assert httpx.get(url, timeout=10).status_code == 403


# --- STS -----------------------------------------------------------------------------------------

def assume_role(m: CloudMock, token: str) -> httpx.Response:
    return m.http.post("/", data={
        "Action": "AssumeRoleWithWebIdentity",
        "Version": "2011-06-15",
        "RoleArn": "arn:aws:iam::111122223333:role/streammask",
        "RoleSessionName": "e2e",
        "WebIdentityToken": token,
    })


def test_sts_web_identity_credentials_sign_bedrock_requests(mock):
    r = assume_role(mock, "not-the-token")
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/xml")
    assert ET.fromstring(r.text).find(f"{STS_NS}Error/{STS_NS}Code").text == "InvalidIdentityToken"

    r = assume_role(mock, WEB_IDENTITY)
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.text)
    assert root.tag == f"{STS_NS}AssumeRoleWithWebIdentityResponse"
    c = root.find(f"{STS_NS}AssumeRoleWithWebIdentityResult/{STS_NS}Credentials")
    ak, sk, token = (c.find(f"{STS_NS}{t}").text for t in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
    assert ak.startswith("ASIA") and len(sk) == 40
    arn = root.find(f"{STS_NS}AssumeRoleWithWebIdentityResult/{STS_NS}AssumedRoleUser/{STS_NS}Arn").text
    assert arn == "arn:aws:sts::111122223333:assumed-role/streammask/e2e"

    client = bedrock(mock, aws_access_key=ak, aws_secret_key=sk, aws_session_token=token)
    assert ask(client, "via sts").content[0].text == "via sts"
    # The issued key without its session token is refused.
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(bedrock(mock, aws_access_key=ak, aws_secret_key=sk))
    recs = [r for r in mock.received() if r["path"].startswith("/model/")]
    assert recs[0]["aws_access_key_id"] == ak and "auth_error" not in recs[0]
    assert "UnrecognizedClientException" in recs[1]["auth_error"]
    assert mock.clouds()["sts_calls"] == 2


def test_sts_response_parses_with_boto3(mock):
    import boto3

    sts = boto3.client(
        "sts", region_name="us-east-1", endpoint_url=mock.url,
        aws_access_key_id="unused", aws_secret_access_key="unused",
    )
    out = sts.assume_role_with_web_identity(
        RoleArn="arn:aws:iam::111122223333:role/streammask",
        RoleSessionName="boto", WebIdentityToken=WEB_IDENTITY,
    )
    creds = out["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    assert creds["Expiration"].timestamp() > time.time() + 3000
    assert out["AssumedRoleUser"]["Arn"].endswith(":assumed-role/streammask/boto")
    with pytest.raises(sts.exceptions.InvalidIdentityTokenException):
        sts.assume_role_with_web_identity(
            RoleArn="arn:aws:iam::111122223333:role/streammask",
            RoleSessionName="boto", WebIdentityToken="wrong",
        )
    assert mock.clouds()["sts_calls"] == 2


# --- Vertex --------------------------------------------------------------------------------------

def vertex(m: CloudMock, token: str) -> anthropic.AnthropicVertex:
    return anthropic.AnthropicVertex(
        project_id="p", region="us-east5", base_url=f"{m.url}/v1", access_token=token, max_retries=0
    )


def test_vertex_with_an_issued_token(mock):
    r = mock.oauth_token()
    assert r.status_code == 200, r.text
    tok = r.json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600
    assert tok["access_token"].startswith("ya29.mock-")
    client = vertex(mock, tok["access_token"])
    msg = ask(client, "hello vertex", model="claude-sonnet-4-5@20250929")
    assert msg.content[0].text == "hello vertex"
    assert msg.model == "claude-sonnet-4-5@20250929"
    mock.script({"kind": "text", "text": "streamed from vertex", "max_delta": 2})
    assert stream_text(client, model="claude-sonnet-4-5@20250929") == "streamed from vertex"
    n = client.messages.count_tokens(model="claude-sonnet-4-5@20250929",
                                     messages=[{"role": "user", "content": "count"}])
    assert n.input_tokens > 0
    recs = [r for r in mock.received() if r["path"].startswith("/v1/projects/")]
    assert [r["path"].rsplit(":", 1)[1] for r in recs] == ["rawPredict", "streamRawPredict", "rawPredict"]
    assert all(r["auth_kind"] == "google_oauth" for r in recs)
    body = json.loads(recs[0]["body"])
    assert "model" not in body and body["anthropic_version"]
    assert mock.clouds()["oauth_tokens_issued"] == 1


def test_vertex_refuses_a_wrong_token(mock):
    with pytest.raises(anthropic.AuthenticationError) as e:
        ask(vertex(mock, "ya29.not-issued"))
    assert e.value.status_code == 401
    assert e.value.body["error"]["status"] == "UNAUTHENTICATED"
    assert mock.clouds()["vertex_auth_failures"] == 1


def test_token_endpoint_checks_the_assertion(mock):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (
        mock.assertion(key=other),
        mock.assertion(aud="https://oauth2.googleapis.com/token"),
        mock.assertion(scope="https://www.googleapis.com/auth/userinfo.email"),
        mock.assertion(exp_in=-60),
    ):
        r = mock.oauth_token(bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_grant"
    assert mock.clouds() == {
        "sts_calls": 0, "oauth_tokens_issued": 0, "bedrock_auth_failures": 0, "vertex_auth_failures": 0,
    }
