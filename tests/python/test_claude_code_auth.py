"""9. The real Claude Code CLI through a proxy that requires a JWT: the developer holds only a
short-lived token (printed by `apiKeyHelper` in ~/.claude/settings.json), the proxy holds the
Claude API key.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import authkit
import smtest
from authkit import SigningKey
from smtest import CLAUDE_BIN, GITHUB_TOKEN, has_placeholder_for, run_claude

pytestmark = pytest.mark.claude_code

UPSTREAM_KEY = "sk-ant-api03-streammask-e2e-org-key-for-claude-code"
smtest.plant(UPSTREAM_KEY)


def run_claude_with_helper(base_url: str, prompt: str, tmp: Path, helper_token: str):
    """Claude Code with no API key of its own: its apiKeyHelper prints the developer's JWT."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    token_file = home / "token"
    token_file.write_text(helper_token)
    helper = home / "token-helper.sh"
    helper.write_text(f"#!/bin/sh\ncat '{token_file}'\n")
    helper.chmod(0o700)
    out = run_claude(base_url, prompt, tmp, api_key=None, settings={"apiKeyHelper": str(helper)})
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
    )


def test_claude_code_with_an_api_key_helper_jwt(proxy_factory, mock, idp, tmp_path):
    if not Path(CLAUDE_BIN).exists():
        pytest.fail(f"Claude Code CLI not found at {CLAUDE_BIN} (set CLAUDE_BIN)")
    key = SigningKey("ES256")
    idp.publish(key)
    key_file = tmp_path / "upstream-key"
    key_file.write_text(UPSTREAM_KEY)
    config = (
        f'[upstream]\napi_key_file = "{key_file}"\n\n'
        f'[auth]\nmode = "jwt"\nissuer = "{idp.issuer}"\naudience = "{authkit.AUDIENCE}"\n'
        f'jwks_url = "{idp.jwks_url}"\nrequired_groups = ["engineering"]\n'
    )
    proxy = proxy_factory(config=config, name="claude-code-jwt")
    token = authkit.token(key, idp.issuer, sub="dev@example.com", groups=["engineering"])

    out = run_claude_with_helper(proxy.url, f"Why does CI fail? The token is {GITHUB_TOKEN}. Answer briefly.", tmp_path, token)
    assert out.returncode == 0, f"claude failed: {out.stderr[-3000:]}"
    # The mock echoes the (masked) prompt back: the conversation went through.
    assert has_placeholder_for(out.stdout, GITHUB_TOKEN), out.stdout[-2000:]
    msgs = mock.messages()
    assert msgs, "no /v1/messages request reached the mock"
    for record in mock.received():
        assert mock.headers_named(record, "x-api-key") == [UPSTREAM_KEY], record["path"]
        assert mock.header(record, "authorization") is None
        assert token not in json.dumps(record["headers"]) and token not in record["body"]
        assert GITHUB_TOKEN not in record["body"]
    assert 'subject="dev@example.com"' in proxy.log_text() or "subject=dev@example.com" in proxy.log_text()

    proxy.assert_healthy()
