"""9. The real Claude Code CLI through a proxy that requires a JWT: the developer holds only a
short-lived token (printed by `apiKeyHelper` in ~/.claude/settings.json), the proxy holds the
Claude API key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

import authkit
import smtest
from authkit import SigningKey
from smtest import CLAUDE_BIN, GITHUB_TOKEN, has_placeholder_for

pytestmark = pytest.mark.claude_code

TIMEOUT_S = 120
UPSTREAM_KEY = "sk-ant-api03-streammask-e2e-org-key-for-claude-code"
smtest.plant(UPSTREAM_KEY)


def run_claude_with_helper(base_url: str, prompt: str, tmp: Path, helper_token: str):
    home, project = tmp / "home", tmp / "project"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    project.mkdir(exist_ok=True)
    helper = home / "token-helper.sh"
    token_file = home / "token"
    token_file.write_text(helper_token)
    helper.write_text(f"#!/bin/sh\ncat '{token_file}'\n")
    helper.chmod(0o700)
    (home / ".claude" / "settings.json").write_text(json.dumps({"apiKeyHelper": str(helper)}))
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    cmd = [CLAUDE_BIN, "-p", prompt, "--session-id", str(uuid.uuid4())]
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"claude -p did not finish within {TIMEOUT_S}s: {stderr.decode(errors='replace')[-2000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


@pytest.fixture(scope="module")
def idp():
    server = authkit.IdP()
    yield server
    server.close()


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
