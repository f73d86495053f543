"""2. The real Claude Code CLI through the proxy.

Claude Code (`claude -p`) talks to the proxy with ANTHROPIC_BASE_URL; HOME and the project are
temporary directories. The mock's scripts use `match` so that the extra requests Claude Code
may send (title, quota, warm-up; they carry no `tools`) never take the scripted replies.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from smtest import (
    API_KEY,
    AWS_KEY_ID,
    CLAUDE_BIN,
    GITHUB_TOKEN,
    GITHUB_TOKEN_2,
    PG_PASSWORD,
    PG_URI,
    has_placeholder_for,
    run_claude,
)

pytestmark = pytest.mark.claude_code

# Headers Claude Code sets that the proxy must forward unchanged.
FORWARDED = ("anthropic-beta", "user-agent", "anthropic-version", "x-claude-code-session-id")


def secrets_in(record: dict, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in record["body"]]


@pytest.fixture(scope="module")
def baseline_headers(mock_server, tmp_path_factory) -> dict[str, str]:
    """The headers Claude Code sends when it talks to the mock directly (no proxy)."""
    if not Path(CLAUDE_BIN).exists():
        pytest.fail(f"Claude Code CLI not found at {CLAUDE_BIN} (set CLAUDE_BIN)")
    mock_server.reset()
    sid = str(uuid.uuid4())
    out = run_claude(mock_server.url, "say hi", tmp_path_factory.mktemp("cc-baseline"), session_id=sid)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    msgs = [r for r in mock_server.received() if r["path"] == "/v1/messages"]
    assert msgs, "Claude Code sent no /v1/messages request to the mock"
    rec = msgs[-1]
    headers = {}
    for name in FORWARDED:
        values = [v for k, v in rec["headers"] if k.lower() == name]
        assert values, f"Claude Code did not send {name}"
        headers[name] = values[0]
    assert headers["x-claude-code-session-id"] == sid
    mock_server.reset()
    return headers


def test_prompt_secret_is_masked_and_claude_code_headers_pass(proxy, mock, tmp_path, baseline_headers):
    sid = str(uuid.uuid4())
    prompt = (
        f"Why does the deploy fail? DATABASE_URL={PG_URI} and the CI token is {GITHUB_TOKEN}. "
        "Answer briefly."
    )
    out = run_claude(proxy.url, prompt, tmp_path, session_id=sid)
    stdout = out.stdout.decode(errors="replace")
    assert out.returncode == 0, f"claude failed: {out.stderr.decode(errors='replace')[-3000:]}"
    # The mock echoes the (masked) prompt: the reply arrives, masked.
    assert has_placeholder_for(stdout, GITHUB_TOKEN), stdout[-2000:]
    assert has_placeholder_for(stdout, PG_PASSWORD), stdout[-2000:]
    assert GITHUB_TOKEN not in stdout and PG_PASSWORD not in stdout

    msgs = mock.messages()
    assert msgs, "no /v1/messages request reached the mock"
    for rec in mock.received():
        assert not secrets_in(rec, [GITHUB_TOKEN, PG_PASSWORD]), f"secret reached the mock: {rec['path']}"
    main = max(msgs, key=lambda r: len(r["body"]))
    assert len(main["body"]) > 40_000, "expected Claude Code's large request body"
    json.loads(main["body"])  # complete, valid JSON
    assert main["query"] == "beta=true"
    for rec in msgs:
        for name, value in baseline_headers.items():
            got = mock.headers_named(rec, name)
            expected = sid if name == "x-claude-code-session-id" else value
            assert got == [expected], f"{name}: sent {expected!r}, the mock got {got!r}"
    proxy.assert_healthy()


def test_secret_in_a_file_claude_code_reads_is_masked(proxy, mock, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    marker = "read-ok-7f3a9c"
    env_file = project / ".env"
    env_file.write_text(
        f"DATABASE_URL={PG_URI}\n"
        f"GITHUB_TOKEN={GITHUB_TOKEN_2}\n"
        f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}\n"
        f"E2E_MARKER={marker}\n"
    )
    mock.script(
        [
            {
                "match": {"has_tools": True, "body_lacks": marker},
                "kind": "tool_use",
                "text": "Let me read the file.",
                "tool": {"name": "Read", "input": {"file_path": str(env_file)}},
            },
            {
                "match": {"has_tools": True, "body_contains": marker},
                "kind": "text",
                "text": "The .env file configures a database, GitHub and AWS. e2e-done",
            },
        ]
    )
    out = run_claude(
        proxy.url,
        "What does the .env file in this project configure?",
        tmp_path,
        "--allowedTools",
        "Read",
    )
    stdout = out.stdout.decode(errors="replace")
    assert out.returncode == 0, f"claude failed: {out.stderr.decode(errors='replace')[-3000:]}"
    assert "e2e-done" in stdout, stdout[-2000:]

    secrets = [PG_PASSWORD, GITHUB_TOKEN_2, AWS_KEY_ID]
    for rec in mock.received():
        assert not secrets_in(rec, secrets), f"a secret from .env reached the mock: {rec['path']}"
    with_result = [r for r in mock.messages() if marker in r["body"]]
    assert with_result, "the tool_result never came back (Read did not run?)"
    body = with_result[-1]["body"]
    assert "tool_result" in body
    for secret in secrets:
        assert has_placeholder_for(body, secret), "the file's secret was not replaced by its placeholder"
    assert mock.stats()["pending_scripts"] == 0
    proxy.assert_healthy()
