"""9b. The approvals console in a real browser: Debian's Chromium driven by playwright-core
(`browser/console.mjs`; both installed by .ci/install).

A request held in `mode = "hold"` waits while an approver signs in to the console, finds the
approval's card (the preview masked, no raw secret anywhere in the HTML, the list refreshed in
place by console.js), and approves it through the card's form; the held request then completes.

`STREAMMASK_UPDATE_SCREENSHOT=1` copies the screenshot of the list to docs/approvals-console.png.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

import smtest
from smtest import REPO
from test_approvals import UPSTREAM_KEY, api, approvals_config, key, pending_for, send, upstream_saw

SCRIPT = Path(__file__).resolve().parent / "browser" / "console.mjs"
CHROMIUM = Path("/usr/bin/chromium")
NODE_DIR = Path(
    os.environ.get("STREAMMASK_NODE_DIR")
    or Path(os.environ.get("STREAMMASK_CACHE") or Path.home() / ".cache") / "streammask-node"
)
SCREENSHOT_DOC = REPO / "docs" / "approvals-console.png"
SCRIPT_TIMEOUT_S = 90
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tools() -> str:
    """The `node` binary; fails the test (never skips) when the browser or its driver is missing."""
    node = shutil.which("node")
    problems = []
    if node is None:
        problems.append("`node` is not on PATH")
    if not CHROMIUM.exists():
        problems.append(f"{CHROMIUM} is missing")
    if not (NODE_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        problems.append(f"playwright-core is not installed in {NODE_DIR}")
    if problems:
        pytest.fail("; ".join(problems) + ": run .ci/install", pytrace=False)
    return node


def _github_token() -> str:
    """A fresh classic GitHub token (synthetic, made at run time), registered as planted."""
    alphabet = string.ascii_letters + string.digits
    token = "ghp_" + "".join(secrets.choice(alphabet) for _ in range(36))
    smtest.plant(token)
    return token


def _run_console(node: str, proxy, approval_id: str, expect: list[str], forbidden: list[str],
                 screenshot: Path, reason: str) -> subprocess.CompletedProcess:
    args = [node, str(SCRIPT), "--admin", proxy.admin_url, "--id", approval_id,
            "--screenshot", str(screenshot), "--reason", reason,
            "--detail-screenshot", str(screenshot.with_name("approvals-detail.png"))]
    for text in expect:
        args += ["--expect", text]
    env = dict(os.environ)
    env.update({
        "CONSOLE_TOKEN": key("carol"),  # in the environment, not on the command line
        "CONSOLE_FORBIDDEN": json.dumps(forbidden),
        "STREAMMASK_NODE_DIR": str(NODE_DIR),
        "CHROMIUM": str(CHROMIUM),
    })
    # Its own process group, so a timeout ends Chromium's processes too.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"console.mjs did not finish in {SCRIPT_TIMEOUT_S}s:\n{out.decode(errors='replace')}"
                    f"\n{err.decode(errors='replace')[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_an_approver_approves_a_held_request_in_the_browser(proxy_factory, mock, tmp_path):
    node = _tools()
    proxy = proxy_factory(config=approvals_config(mode="hold", hold_secs=60), name="approvals-browser")
    marker = uuid.uuid4().hex
    token = _github_token()
    destroy = "terraform destroy -target=module.web"
    # The first line's markup must come out as text (escaped) in the browser.
    first_line = f'ticket {marker}: tear down <web> & "cache" tiers'
    text = f"{first_line}\n{destroy}\nexport GITHUB_TOKEN={token}"
    results: dict[str, httpx.Response | BaseException] = {}

    def held(name: str, who: str, body: str) -> threading.Thread:
        def run():
            try:
                results[name] = send(proxy, who, body, session=f"browser-{name}", timeout=90)
            except BaseException as error:  # noqa: BLE001 - reported by the assertions below
                results[name] = error
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    # Company for the screenshot: a second pending card (dave's, released by a denial at the
    # end) and a decided row (bob's, denied at once).
    other_marker = uuid.uuid4().hex
    denied_thread = held("denied", "bob", f"{other_marker}-b\nDROP DATABASE analytics;")
    api(proxy, "carol", "POST", f"/api/approvals/{pending_for(proxy, other_marker + '-b')}/deny",
        json={"reason": "analytics is still read by finance"})
    other_thread = held("other", "dave", f"{other_marker}-d\nkubectl delete namespace payments")
    other_id = pending_for(proxy, f"{other_marker}-d")

    thread = held("main", "alice", text)
    approval_id = pending_for(proxy, marker)
    shown = api(proxy, "carol", "GET", f"/api/approvals/{approval_id}").json()
    assert shown["state"] == "pending" and shown["subject"] == "alice", shown
    assert "main" not in results and upstream_saw(mock, marker) == 0

    screenshot = tmp_path / "approvals-console.png"
    placeholder = smtest.placeholder_for(token, "github-pat-classic")
    reason = f"approved in the browser ({marker[:8]})"
    started = time.monotonic()
    out = _run_console(
        node, proxy, approval_id,
        expect=[first_line, destroy, placeholder],
        forbidden=[token, key("alice"), key("bob"), key("carol"), key("dave"), UPSTREAM_KEY],
        screenshot=screenshot, reason=reason,
    )
    printed = out.stdout.decode(errors="replace")
    assert out.returncode == 0, f"console.mjs failed:\n{printed}\n{out.stderr.decode(errors='replace')[-3000:]}"
    summary = json.loads(printed.strip().splitlines()[-1])
    print("console.mjs:", json.dumps(summary, indent=1))  # shown by pytest -s or on a failure
    assert summary["ok"] is True and summary["approval_id"] == approval_id, summary
    assert summary["decision"].startswith("Approved by carol") and reason in summary["decision"], summary

    # The held request goes on at once, and upstream sees it once.
    thread.join(30)
    assert not thread.is_alive(), "the held request did not finish after the approval"
    response = results["main"]
    assert isinstance(response, httpx.Response), repr(response)
    assert response.status_code == 200, response.text
    assert upstream_saw(mock, marker) == 1
    assert time.monotonic() - started < SCRIPT_TIMEOUT_S
    decided = api(proxy, "carol", "GET", f"/api/approvals/{approval_id}").json()
    assert decided["state"] == "approved" and decided["decided_by"] == "carol" and decided["reason"] == reason

    data = screenshot.read_bytes()
    assert data.startswith(PNG_MAGIC), "the screenshot is not a PNG"
    assert len(data) > 10_000, f"the screenshot is suspiciously small ({len(data)} bytes)"
    if os.environ.get("STREAMMASK_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT_DOC.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, SCREENSHOT_DOC)

    # Release dave's held request; bob's was answered by the denial.
    api(proxy, "carol", "POST", f"/api/approvals/{other_id}/deny", json={"reason": "not today"})
    for name, t in (("denied", denied_thread), ("other", other_thread)):
        t.join(30)
        assert isinstance(results.get(name), httpx.Response) and results[name].status_code == 403, results.get(name)
    assert upstream_saw(mock, other_marker) == 0
    proxy.assert_healthy()
