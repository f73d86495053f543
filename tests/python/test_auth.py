"""7. Identity and credentials: JWT/OIDC callers, static CI keys, per-group profiles, and the
proxy holding the upstream key.

A loopback identity provider (authkit.IdP) serves a JWKS and an OIDC discovery document with
keys generated at test time. Every refused request is checked against the mock's counters:
the upstream is never contacted for it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid

import anthropic
import httpx
import pytest

import authkit
import smtest
from authkit import AUDIENCE, SigningKey
from smtest import API_KEY, GITHUB_TOKEN, has_placeholder_for, message_text, user_request

UPSTREAM_KEY = "sk-ant-api03-streammask-e2e-org-upstream-key-0001"
UPSTREAM_KEY_ROTATED = "sk-ant-api03-streammask-e2e-org-upstream-key-0002"
CI_KEY = "smci-e2e-deploy-3c1f9b7a64d2e8f05a19c7b3d6e2f4a8"
smtest.plant(UPSTREAM_KEY, UPSTREAM_KEY_ROTATED, CI_KEY)


@pytest.fixture(scope="module")
def keys(idp):
    """The IdP's current keys: RS256 (primary), PS256, ES256, ES384 and EdDSA."""
    ks = {alg: SigningKey(alg) for alg in ("RS256", "PS256", "ES256", "ES384", "EdDSA")}
    idp.publish(*ks.values())
    return ks


@pytest.fixture(scope="module")
def upstream_key_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("upstream-key") / "anthropic-api-key"
    path.write_text(UPSTREAM_KEY + "\n")
    return path


def jwt_config(idp, key_file, source: str = "url", extra: str = "", tail: str = "") -> str:
    sources = {
        "url": f'jwks_url = "{idp.jwks_url}"\n',
        "discovery": "",  # <issuer>/.well-known/openid-configuration
        "file": f'jwks_file = "{key_file.parent / "jwks.json"}"\n',
    }
    return (
        f'[upstream]\napi_key_file = "{key_file}"\n\n'
        f'[auth]\nmode = "jwt"\nissuer = "{idp.issuer}"\naudience = "{AUDIENCE}"\n'
        f"{sources[source]}leeway_secs = 5\njwks_refresh_min_secs = 1\n"
        f'required_groups = ["engineering", "contractors"]\n{extra}\n{tail}'
    )


@pytest.fixture(scope="module")
def jwt_proxy(proxy_factory, idp, keys, upstream_key_file):
    return proxy_factory(config=jwt_config(idp, upstream_key_file), name="jwt")


def post(proxy, token: str | None, *, via: str = "bearer", body: dict | None = None, **kw):
    headers = {"anthropic-version": "2023-06-01"}
    if token is not None:
        if via == "bearer":
            headers["authorization"] = f"Bearer {token}"
        else:
            headers["x-api-key"] = token
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        return c.post("/v1/messages", json=body or user_request("hello"), headers=headers, **kw)


def assert_never_reached_upstream(mock, before: dict) -> None:
    after = mock.stats()
    assert after["requests"] == before["requests"], "a refused request reached the upstream"
    assert after["connections"] == before["connections"], "a refused request opened an upstream connection"


def log_reason_count(proxy, reason: str) -> int:
    return len(re.findall(rf'auth_failure="?{reason}\b', proxy.log_text()))


# --- accepted ------------------------------------------------------------------------------------

def test_valid_token_is_accepted_and_upstream_gets_only_the_proxy_key(jwt_proxy, mock, idp, keys):
    token = authkit.token(keys["RS256"], idp.issuer)
    # The SDK's two ways: auth_token (Authorization: Bearer) and api_key (x-api-key).
    with anthropic.Anthropic(base_url=jwt_proxy.url, auth_token=token, api_key=None, max_retries=0) as c:
        reply = c.messages.create(**user_request("hello via bearer"))
    assert "hello via bearer" in message_text(reply)
    with anthropic.Anthropic(base_url=jwt_proxy.url, api_key=token, max_retries=0) as c:
        with c.messages.stream(**user_request("hello via x-api-key")) as s:
            assert "hello via x-api-key" in s.get_final_text()
    received = mock.messages()
    assert len(received) == 2
    for record in received:
        assert mock.headers_named(record, "x-api-key") == [UPSTREAM_KEY]
        assert mock.header(record, "authorization") is None
        assert not any(token in v for _, v in record["headers"]), "the caller's token reached the upstream"
        assert token not in record["body"]
    assert re.search(r'subject="?alice@example.com', jwt_proxy.log_text())
    assert token not in jwt_proxy.log_text()
    jwt_proxy.assert_healthy()


@pytest.mark.parametrize("alg", ["PS256", "ES256", "ES384", "EdDSA"])
def test_other_asymmetric_algorithms_are_accepted(jwt_proxy, mock, idp, keys, alg):
    r = post(jwt_proxy, authkit.token(keys[alg], idp.issuer))
    assert r.status_code == 200, r.text
    assert mock.stats()["requests"] == 1


# --- refused -------------------------------------------------------------------------------------

def _refusals(idp, keys):
    rs = keys["RS256"]
    now = int(time.time())
    stranger = SigningKey("RS256", kid=rs.kid)  # same kid, different key: bad signature
    return {
        "expired": (401, "authentication_error", authkit.token(rs, idp.issuer, exp=now - 120, iat=now - 900, nbf=now - 900)),
        "not_yet_valid": (401, "authentication_error", authkit.token(rs, idp.issuer, nbf=now + 600)),
        "wrong_audience": (401, "authentication_error", authkit.token(rs, idp.issuer, aud="another-service")),
        "wrong_issuer": (401, "authentication_error", authkit.token(rs, "https://evil.example/realms/e2e")),
        "bad_signature": (401, "authentication_error", authkit.token(stranger, idp.issuer)),
        "alg_none": (401, "authentication_error", authkit.unsigned_token(idp.issuer, rs.kid)),
        "hs256_with_public_key": (401, "authentication_error", authkit.hs256_with_public_key(rs, idp.issuer)),
        "missing_group": (403, "permission_error", authkit.token(rs, idp.issuer, groups=["marketing"])),
        "no_groups_claim": (403, "permission_error", authkit.token(rs, idp.issuer, groups=None)),
        "missing_subject": (401, "authentication_error", authkit.token(rs, idp.issuer, sub=None)),
        "garbage": (401, "authentication_error", "not-a-token"),
        "missing": (401, "authentication_error", None),
    }


REASONS = {
    "expired": "expired",
    "not_yet_valid": "not_yet_valid",
    "wrong_audience": "wrong_audience",
    "wrong_issuer": "wrong_issuer",
    "bad_signature": "bad_signature",
    "alg_none": "alg_not_allowed",
    "hs256_with_public_key": "alg_not_allowed",
    "missing_group": "group_not_allowed",
    "no_groups_claim": "group_not_allowed",
    "missing_subject": "missing_claim",
    "garbage": "malformed",
    "missing": "missing",
}


@pytest.mark.parametrize("case", list(REASONS))
@pytest.mark.parametrize("via", ["bearer", "x-api-key"])
def test_bad_credentials_are_refused_before_the_upstream(jwt_proxy, mock, idp, keys, case, via):
    status, error_type, token = _refusals(idp, keys)[case]
    before = mock.stats()
    reasons_before = log_reason_count(jwt_proxy, REASONS[case])
    r = post(jwt_proxy, token, via=via)
    assert r.status_code == status, r.text
    smtest.assert_anthropic_error(r.content, error_type)
    if token:
        assert token not in r.text
    assert_never_reached_upstream(mock, before)
    # The reason is recorded (bounded label), and the token is not.
    smtest.wait_until(lambda: log_reason_count(jwt_proxy, REASONS[case]) > reasons_before, 5, what="log line")
    if token:
        assert token not in jwt_proxy.log_text()
    jwt_proxy.assert_healthy()


def test_leeway_tolerates_small_clock_skew(jwt_proxy, mock, idp, keys):
    now = int(time.time())
    rs = keys["RS256"]
    # leeway_secs = 5: just expired and almost valid tokens pass; beyond the leeway they do not.
    assert post(jwt_proxy, authkit.token(rs, idp.issuer, exp=now - 2, iat=now - 600, nbf=now - 600)).status_code == 200
    assert post(jwt_proxy, authkit.token(rs, idp.issuer, nbf=now + 2)).status_code == 200
    assert post(jwt_proxy, authkit.token(rs, idp.issuer, exp=now - 30, iat=now - 600, nbf=now - 600)).status_code == 401
    assert post(jwt_proxy, authkit.token(rs, idp.issuer, nbf=now + 30)).status_code == 401
    assert mock.stats()["requests"] == 2


def test_sdk_sees_typed_errors(jwt_proxy, mock, idp, keys):
    now = int(time.time())
    expired = authkit.token(keys["RS256"], idp.issuer, exp=now - 120, iat=now - 900, nbf=now - 900)
    with anthropic.Anthropic(base_url=jwt_proxy.url, auth_token=expired, api_key=None, max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(**user_request("hi"))
    outsider = authkit.token(keys["RS256"], idp.issuer, groups=["marketing"])
    with anthropic.Anthropic(base_url=jwt_proxy.url, auth_token=outsider, api_key=None, max_retries=0) as c:
        with pytest.raises(anthropic.PermissionDeniedError):
            c.messages.create(**user_request("hi"))
    assert mock.stats()["requests"] == 0


def test_unknown_kid_is_refused_then_accepted_after_rotation(jwt_proxy, mock, idp, keys):
    rotated = SigningKey("RS256")
    token = authkit.token(rotated, idp.issuer)
    before = mock.stats()
    r = post(jwt_proxy, token)
    assert r.status_code == 401, r.text
    smtest.assert_anthropic_error(r.content, "authentication_error")
    assert_never_reached_upstream(mock, before)
    # The IdP rotates: the new key is published next to the old ones.
    idp.publish(*keys.values(), rotated)
    try:
        time.sleep(1.2)  # jwks_refresh_min_secs = 1
        r = post(jwt_proxy, token)
        assert r.status_code == 200, r.text
        assert mock.stats()["requests"] == before["requests"] + 1
        # Keys that were there before the rotation still work.
        assert post(jwt_proxy, authkit.token(keys["ES256"], idp.issuer)).status_code == 200
    finally:
        idp.publish(*keys.values())
        time.sleep(1.1)


def test_a_flood_of_bogus_kids_does_not_hammer_the_idp(proxy_factory, mock, idp, keys, upstream_key_file):
    config = jwt_config(idp, upstream_key_file).replace("jwks_refresh_min_secs = 1", "jwks_refresh_min_secs = 60")
    proxy = proxy_factory(config=config, name="jwt-ratelimit")
    assert post(proxy, authkit.token(keys["RS256"], idp.issuer)).status_code == 200
    fetches = idp.jwks_fetches
    before = mock.stats()
    for i in range(60):
        bogus = SigningKey("ES256", kid=f"bogus-{uuid.uuid4().hex}")
        r = post(proxy, authkit.token(bogus, idp.issuer))
        assert r.status_code == 401, r.text
    assert_never_reached_upstream(mock, before)
    # At most one refetch inside the 60 s window, not one per request.
    assert idp.jwks_fetches - fetches <= 1, f"{idp.jwks_fetches - fetches} JWKS fetches for 60 bogus kids"
    assert log_reason_count(proxy, "unknown_kid") == 60
    proxy.assert_healthy()


def test_unreachable_idp_is_503_and_never_reaches_upstream(proxy_factory, mock, idp, keys, upstream_key_file):
    dead = smtest.free_port()
    config = jwt_config(idp, upstream_key_file).replace(idp.jwks_url, f"http://127.0.0.1:{dead}/keys")
    proxy = proxy_factory(config=config, name="jwt-dead-idp")
    r = post(proxy, authkit.token(keys["RS256"], idp.issuer))
    assert r.status_code == 503, r.text
    smtest.assert_anthropic_error(r.content, "api_error")
    assert mock.stats()["requests"] == 0
    smtest.wait_until(lambda: log_reason_count(proxy, "keys_unavailable") == 1, 5, what="log line")
    proxy.assert_healthy()


# --- key sources -----------------------------------------------------------------------------------

def test_oidc_discovery(proxy_factory, mock, idp, keys, upstream_key_file):
    before = idp.discovery_fetches
    proxy = proxy_factory(config=jwt_config(idp, upstream_key_file, source="discovery"), name="jwt-discovery")
    r = post(proxy, authkit.token(keys["EdDSA"], idp.issuer))
    assert r.status_code == 200, r.text
    assert idp.discovery_fetches > before, "the proxy did not use the discovery document"
    assert post(proxy, authkit.token(keys["RS256"], idp.issuer, aud="other")).status_code == 401
    assert mock.stats()["requests"] == 1


def test_jwks_file(proxy_factory, mock, idp, keys, upstream_key_file):
    file_key = SigningKey("ES256")
    (upstream_key_file.parent / "jwks.json").write_text(json.dumps({"keys": [file_key.jwk()]}))
    fetches = idp.jwks_fetches
    proxy = proxy_factory(config=jwt_config(idp, upstream_key_file, source="file"), name="jwt-file")
    assert post(proxy, authkit.token(file_key, idp.issuer)).status_code == 200
    # Keys only the IdP has are unknown to a file-configured proxy.
    r = post(proxy, authkit.token(keys["RS256"], idp.issuer))
    assert r.status_code == 401 and "unknown key" in r.json()["error"]["message"]
    assert idp.jwks_fetches == fetches, "a jwks_file proxy fetched keys over HTTP"
    assert mock.stats()["requests"] == 1


# --- static keys, combined modes, profiles -----------------------------------------------------------

def combined_config(idp, key_file) -> str:
    return f"""
[server]
max_body_bytes = 1048576

[upstream]
api_key_file = "{key_file}"

[auth]
mode = ["jwt", "static_keys"]
issuer = "{idp.issuer}"
audience = "{AUDIENCE}"
jwks_url = "{idp.jwks_url}"
groups_claim = "realm_access.roles"

[[auth.static_keys]]
subject = "ci-deploy"
sha256 = "{authkit.sha256_hex(CI_KEY)}"
groups = ["ci"]

[[profiles]]
name = "contractors"
groups = ["contractors"]
actions = {{ "github-pat-classic" = "block" }}
allowed_models = ["claude-haiku-*"]
max_body_bytes = 8192

[[profiles]]
name = "employees"
groups = ["engineering"]

[[profiles]]
name = "default"
allowed_models = ["claude-opus-4-8"]
"""


@pytest.fixture(scope="module")
def combined_proxy(proxy_factory, idp, keys, upstream_key_file):
    return proxy_factory(config=combined_config(idp, upstream_key_file), name="jwt-static-profiles")


def roles_token(idp, keys, *roles, sub="bob@example.com"):
    return authkit.token(keys["RS256"], idp.issuer, sub=sub, groups=None, realm_access={"roles": list(roles)})


PROMPT = f"Deploy fails, my token is {GITHUB_TOKEN}. Why?"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_same_prompt_masked_for_employees_and_blocked_for_contractors(combined_proxy, mock, idp, keys, stream):
    employee = roles_token(idp, keys, "engineering", sub="erin@example.com")
    contractor = roles_token(idp, keys, "contractors", sub="carl@example.com")
    body = user_request(PROMPT, stream=stream, model="claude-haiku-4-5")

    r = post(combined_proxy, employee, body=body)
    assert r.status_code == 200, r.text
    # The mock echoes the prompt: the reply (streamed or not) carries the placeholder only.
    assert GITHUB_TOKEN not in r.text and has_placeholder_for(r.text, GITHUB_TOKEN), r.text[:2000]
    sent = mock.messages()
    assert len(sent) == 1
    assert GITHUB_TOKEN not in sent[0]["body"] and has_placeholder_for(sent[0]["body"], GITHUB_TOKEN)

    before = mock.stats()
    r = post(combined_proxy, contractor, body=body)
    assert r.status_code == 403, r.text
    err = smtest.assert_anthropic_error(r.content, "permission_error")
    assert "github-pat-classic" in err["error"]["message"]
    assert GITHUB_TOKEN not in r.text
    assert_never_reached_upstream(mock, before)
    smtest.wait_until(lambda: "carl@example.com" in combined_proxy.log_text(), 5, what="log line")
    lines = combined_proxy.log_text().splitlines()
    carl = [l for l in lines if re.search(r'subject="?carl@example.com', l)]
    assert carl and re.search(r'profile="?contractors', carl[-1]), carl
    assert re.search(r'blocked_rule="?github-pat-classic', carl[-1]), carl[-1]
    erin = [l for l in lines if re.search(r'subject="?erin@example.com', l)]
    assert erin and re.search(r'profile="?employees', erin[-1]), erin


def test_profile_models_and_size_limit(combined_proxy, mock, idp, keys):
    contractor = roles_token(idp, keys, "contractors")
    employee = roles_token(idp, keys, "engineering")
    # Contractors may use haiku only.
    r = post(combined_proxy, contractor, body=user_request("hi", model="claude-opus-4-1"))
    assert r.status_code == 403, r.text
    smtest.assert_anthropic_error(r.content, "permission_error")
    assert post(combined_proxy, contractor, body=user_request("hi", model="claude-haiku-4-5")).status_code == 200
    # Employees have no model list (the default profile's list is for callers in no profile).
    assert post(combined_proxy, employee, body=user_request("hi", model="claude-opus-4-1")).status_code == 200
    # Contractors' requests are limited to 8 KiB; employees' to the server's 1 MiB.
    big = user_request("x" * 20_000, model="claude-haiku-4-5")
    r = post(combined_proxy, contractor, body=big)
    assert r.status_code == 413, r.text
    smtest.assert_anthropic_error(r.content, "request_too_large")
    assert post(combined_proxy, employee, body=big).status_code == 200
    assert mock.stats()["requests"] == 3


def test_model_list_fails_closed_on_bodies_it_cannot_read(combined_proxy, mock, idp, keys):
    """The model check once passed whatever did not deserialise into the expected shape: a
    duplicate `model` key (serde refused it, the API reads the last) or a batch whose `requests`
    is not a list of objects. Now such bodies are refused and never reach the upstream."""
    contractor = roles_token(idp, keys, "contractors")
    headers = {"authorization": f"Bearer {contractor}", "content-type": "application/json"}
    messages = '[{"role":"user","content":"hi"}]'
    dup = f'{{"model":"claude-haiku-4-5","max_tokens":8,"messages":{messages},"model":"claude-opus-4-1"}}'
    before = mock.stats()
    with httpx.Client(base_url=combined_proxy.url, timeout=30, headers=headers) as c:
        r = c.post("/v1/messages", content=dup)
        assert r.status_code == 400, r.text
        smtest.assert_anthropic_error(r.content, "invalid_request_error")
        assert "duplicate object key" in r.json()["error"]["message"]
        for body in (
            {"model": ["claude-opus-4-1"], "max_tokens": 8, "messages": []},
            {"model": 4, "max_tokens": 8, "messages": []},
        ):
            r = c.post("/v1/messages", json=body)
            assert r.status_code == 403, r.text
        for requests in (
            {"custom_id": "a", "params": {"model": "claude-opus-4-1"}},
            ["claude-opus-4-1"],
            [{"custom_id": "a", "params": "claude-opus-4-1"}],
        ):
            r = c.post("/v1/messages/batches", json={"requests": requests})
            assert r.status_code == 403, r.text
            smtest.assert_anthropic_error(r.content, "permission_error")
    assert mock.stats()["requests"] == before["requests"]


def test_static_ci_key_and_default_profile(combined_proxy, mock):
    # A CI job authenticates with its service-account key (stored only as a hash in config).
    with anthropic.Anthropic(base_url=combined_proxy.url, api_key=CI_KEY, max_retries=0) as c:
        reply = c.messages.create(**user_request("ci says hi", model="claude-opus-4-8"))
        assert "ci says hi" in message_text(reply)
        # `ci` matches no profile: the default profile's model list applies.
        with pytest.raises(anthropic.PermissionDeniedError):
            c.messages.create(**user_request("ci says hi", model="claude-opus-4-1"))
    with anthropic.Anthropic(base_url=combined_proxy.url, api_key=CI_KEY + "x", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(**user_request("hi", model="claude-opus-4-8"))
    sent = mock.messages()
    assert len(sent) == 1
    assert mock.headers_named(sent[0], "x-api-key") == [UPSTREAM_KEY]
    smtest.wait_until(lambda: "unknown_key" in combined_proxy.log_text(), 5, what="log line")
    log = combined_proxy.log_text()
    assert re.search(r'subject="?ci-deploy', log)
    assert re.search(r'auth_failure="?unknown_key', log)
    assert CI_KEY not in log


# --- upstream key -----------------------------------------------------------------------------------

def test_upstream_key_reloads_on_sighup(proxy_factory, mock, idp, keys, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(UPSTREAM_KEY)
    proxy = proxy_factory(config=jwt_config(idp, key_file), name="jwt-reload", fresh=True)
    token = authkit.token(keys["RS256"], idp.issuer)
    assert post(proxy, token).status_code == 200
    key_file.write_text(UPSTREAM_KEY_ROTATED + "\n")
    os.kill(proxy.proc.pid, signal.SIGHUP)
    smtest.wait_until(lambda: "configuration reloaded" in proxy.log_text(), 30, what="reload log line")
    assert post(proxy, token).status_code == 200
    keys_seen = [mock.headers_named(r, "x-api-key") for r in mock.messages()]
    assert keys_seen == [[UPSTREAM_KEY], [UPSTREAM_KEY_ROTATED]]
    # A failed reload (the key file is gone) keeps the whole running configuration, key included.
    key_file.unlink()
    os.kill(proxy.proc.pid, signal.SIGHUP)
    smtest.wait_until(lambda: "reload refused" in proxy.log_text(), 30, what="failure log line")
    assert post(proxy, token).status_code == 200
    assert mock.headers_named(mock.messages()[-1], "x-api-key") == [UPSTREAM_KEY_ROTATED]
    proxy.assert_healthy()


def test_inject_without_authentication_replaces_the_callers_key(proxy_factory, mock, upstream_key_file):
    proxy = proxy_factory(config=f'[upstream]\napi_key_file = "{upstream_key_file}"\n', name="inject-noauth")
    with anthropic.Anthropic(base_url=proxy.url, api_key=API_KEY, max_retries=0) as c:
        c.messages.create(**user_request("hi"))
    (record,) = mock.messages()
    assert mock.headers_named(record, "x-api-key") == [UPSTREAM_KEY]
    assert API_KEY not in json.dumps(record["headers"])


def test_passthrough_is_the_default_without_auth(proxy, mock):
    # auth.mode = "none" and no upstream key: the caller's own key goes upstream unchanged.
    r = post(proxy, API_KEY, via="x-api-key")
    assert r.status_code == 200, r.text
    (record,) = mock.messages()
    assert mock.headers_named(record, "x-api-key") == [API_KEY]


@pytest.mark.parametrize(
    "config, message",
    [
        ('[auth]\nmode = "jwt"\nissuer = "https://idp.example"\naudience = "a"\njwks_url = "https://idp.example/k"\n',
         "upstream.credentials"),
        ('[upstream]\napi_key_env = "SM_E2E_SURELY_UNSET_VARIABLE"\n', "SM_E2E_SURELY_UNSET_VARIABLE"),
        ('[upstream]\ncredentials = "inject"\n', "upstream.credentials"),
        ('[auth]\nmode = "jwt"\nissuer = "https://idp.example"\naudience = "a"\njwks_file = "/nonexistent/jwks.json"\n'
         '[upstream]\napi_key_env = "PATH"\n', "auth.jwks_file"),
        ('[[profiles]]\nname = "x"\ngroups = ["g"]\ndisable_rules = ["no-such-rule"]\n', "no-such-rule"),
    ],
    ids=["jwt-needs-inject", "unset-key-env", "inject-without-key", "missing-jwks-file", "unknown-rule"],
)
def test_misconfiguration_fails_at_startup_naming_the_key(tmp_path, config, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    out = smtest_run([str(smtest.PROXY_BIN), "run", "--config", str(cfg), "--listen", f"127.0.0.1:{smtest.free_port()}",
                      "--admin", f"127.0.0.1:{smtest.free_port()}", "--upstream", "http://127.0.0.1:9"])
    assert out.returncode != 0
    assert message in out.stderr, out.stderr[-2000:]


def smtest_run(cmd):
    import subprocess

    env = dict(os.environ, STREAMMASK_PLACEHOLDER_KEY=smtest.PLACEHOLDER_KEY)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_refusal_reasons_reach_metrics_and_the_audit_trail(proxy_factory, mock, idp, keys, upstream_key_file, tmp_path):
    """The refusal reason is a metric label and an audit field; the token is in neither."""
    from prometheus_client.parser import text_string_to_metric_families

    audit = tmp_path / "audit.jsonl"
    config = jwt_config(idp, upstream_key_file, tail=f'[audit]\nsink = "file"\npath = "{audit}"\n')
    proxy = proxy_factory(config=config, name="jwt-audit", fresh=True)
    now = int(time.time())
    expired = authkit.token(keys["RS256"], idp.issuer, exp=now - 120, iat=now - 900, nbf=now - 900)
    outsider = authkit.token(keys["RS256"], idp.issuer, groups=["marketing"], sub="mallory@example.com")
    valid = authkit.token(keys["RS256"], idp.issuer)
    mock.script({"kind": "text", "text": "ok"})
    sent = {
        "expired": post(proxy, expired),
        "group_not_allowed": post(proxy, outsider),
        "missing": post(proxy, None),
        "ok": post(proxy, valid),
    }
    assert [r.status_code for r in sent.values()] == [401, 403, 401, 200]

    def auth_failures() -> dict[str, float]:
        page = httpx.get(proxy.admin_url + "/metrics", timeout=5).text
        return {
            s.labels["reason"]: s.value
            for family in text_string_to_metric_families(page)
            for s in family.samples
            if s.name == "streammask_auth_failures_total"
        }

    smtest.wait_until(lambda: sum(auth_failures().values()) == 3, 5, what="auth failure metrics")
    failures = auth_failures()
    assert {k: v for k, v in failures.items() if v} == {"expired": 1, "group_not_allowed": 1, "missing": 1}

    def records() -> dict[str, dict]:
        if not audit.exists():
            return {}
        lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        return {r["request_id"]: r for r in lines}

    ids = {name: r.headers["x-streammask-request-id"] for name, r in sent.items()}
    smtest.wait_until(lambda: set(ids.values()) <= set(records()), 10, what="audit records")
    by_id = records()
    for reason in ("expired", "group_not_allowed", "missing"):
        assert by_id[ids[reason]]["auth_failure"] == reason
        assert by_id[ids[reason]]["status"] in (401, 403)
    assert "auth_failure" not in by_id[ids["ok"]]
    assert by_id[ids["ok"]]["identity"]["subject"] != "anonymous"
    text = audit.read_text() + httpx.get(proxy.admin_url + "/metrics", timeout=5).text + proxy.log_text()
    for token in (expired, outsider, valid, UPSTREAM_KEY):
        assert token not in text
