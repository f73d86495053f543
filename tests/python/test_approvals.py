"""9. Just-in-time approval: requests that match `approve` rules wait for a human.

Callers and approvers are static keys (`[auth] mode = "static_keys"`): alice and bob develop,
carol and dave approve (dave also develops, to try approving his own request). Every request
carries a unique marker, so what the shared mock upstream received can be counted per test.
The approvals console's browser test is test_approvals_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import smtest
from smtest import API_KEY, CLAUDE_BIN, GITHUB_TOKEN, run_claude, user_request, wait_until

KEYS = {
    "alice": ("sk-alice-approvals-e2e-000000000001", ["dev"]),
    "bob": ("sk-bob-approvals-e2e-0000000000002", ["dev"]),
    "carol": ("sk-carol-approvals-e2e-00000000003", ["sec"]),
    "dave": ("sk-dave-approvals-e2e-000000000004", ["sec", "dev"]),
}
DESTROY = "terraform destroy -target=module.cache"
# The key the proxy holds for the upstream (callers present their own static keys).
UPSTREAM_KEY = "sk-ant-api03-streammask-e2e-approvals-upstream-01"
UPSTREAM_KEY_ENV = "STREAMMASK_E2E_APPROVALS_UPSTREAM_KEY"
os.environ[UPSTREAM_KEY_ENV] = UPSTREAM_KEY
smtest.plant(UPSTREAM_KEY, *(k for k, _ in KEYS.values()))


def approvals_config(extra: str = "", **approvals: object) -> str:
    lines = [f'[upstream]\napi_key_env = "{UPSTREAM_KEY_ENV}"\n\n[auth]\nmode = "static_keys"\n']
    for subject, (key, groups) in KEYS.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines.append(
            f'[[auth.static_keys]]\nsubject = "{subject}"\nsha256 = "{digest}"\ngroups = {json.dumps(groups)}\n'
        )
    settings = {"approver_groups": ["sec"], **approvals}
    lines.append("[approvals]")
    for name, value in settings.items():
        lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + extra


def key(who: str) -> str:
    return KEYS[who][0]


def send(proxy, who: str, text: str, session: str | None = None, path: str = "/v1/messages",
         body: dict | None = None, timeout: float = 30) -> httpx.Response:
    headers = {"x-api-key": key(who), "anthropic-version": "2023-06-01"}
    if session:
        headers["x-claude-code-session-id"] = session
    return httpx.post(proxy.url + path, json=body or user_request(text), headers=headers, timeout=timeout)


def api(proxy, who: str | None, method: str, path: str, **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if who:
        headers["authorization"] = f"Bearer {key(who)}"
    return httpx.request(method, proxy.admin_url + path, headers=headers, timeout=15, **kw)


def upstream_saw(mock, marker: str) -> int:
    return sum(1 for r in mock.received() if marker in r["body"])


def metric(proxy, name: str, **labels: str) -> float:
    text = httpx.get(proxy.admin_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def pending_for(proxy, fragment: str, what: str = "the pending approval") -> str:
    """The id of the pending approval whose preview holds `fragment`, once it appears (as
    carol sees it through the API)."""
    def find():
        data = api(proxy, "carol", "GET", "/api/approvals", params={"state": "pending"}).json()["data"]
        return next((a["id"] for a in data if fragment in a["preview"]), None)
    return wait_until(find, 15, what=what)


def pending_of(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    assert response.headers["x-streammask-approval-state"] == "pending"
    return response.headers["x-streammask-approval-id"]


@pytest.fixture(scope="module")
def approvals_proxy(proxy_factory):
    return proxy_factory(config=approvals_config(grant_ttl_secs=3), name="approvals")


# --- return mode: the decision, and what a grant covers -------------------------------------------

def test_an_approve_rule_holds_the_request_until_an_approver_approves(approvals_proxy, mock):
    marker = uuid.uuid4().hex
    text = f"{marker}: please run {DESTROY} in staging"
    first = send(approvals_proxy, "alice", text, session="s-1")
    approval_id = pending_of(first)
    error = smtest.assert_anthropic_error(first.content, "permission_error")
    message = error["error"]["message"]
    assert "approve-terraform-destroy" in message and approval_id in message
    link = f"{approvals_proxy.admin_url}/approvals/{approval_id}"
    assert link in message and "again once it is approved" in message
    assert marker not in message  # no request text in the answer
    assert upstream_saw(mock, marker) == 0
    # A retry opens no second approval.
    assert pending_of(send(approvals_proxy, "alice", text, session="s-1")) == approval_id
    # The link works for an approver (the console page; the API object).
    page = api(approvals_proxy, None, "GET", f"/approvals/{approval_id}")
    assert page.status_code == 200 and "Sign in" in page.text
    shown = api(approvals_proxy, "carol", "GET", f"/api/approvals/{approval_id}").json()
    assert shown["state"] == "pending" and shown["subject"] == "alice" and shown["session_id"] == "s-1"
    assert DESTROY in shown["preview"] and shown["rule_id"] == "approve-terraform-destroy"
    decided = api(approvals_proxy, "carol", "POST", f"/api/approvals/{approval_id}/approve")
    assert decided.status_code == 200, decided.text
    assert decided.json()["state"] == "approved" and decided.json()["decided_by"] == "carol"
    assert set(decided.json()) == {
        "id", "state", "rule_id", "subject", "groups", "session_id", "preview", "created_at",
        "expires_at", "decided_by", "reason",
    }
    ok = send(approvals_proxy, "alice", text, session="s-1")
    assert ok.status_code == 200, ok.text
    assert upstream_saw(mock, marker) == 1
    # The next turn carries the same line again: covered, forwarded once more.
    turn2 = user_request(text)
    turn2["messages"] += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "go on"}]
    assert send(approvals_proxy, "alice", text, session="s-1", body=turn2).status_code == 200
    assert upstream_saw(mock, marker) == 2
    # Not covered: another caller, another session, no session, another line.
    for who, session, other in [
        ("bob", "s-1", text),
        ("alice", "s-2", text),
        ("alice", None, text),
        ("alice", "s-1", f"{marker}: please run terraform destroy in staging"),
    ]:
        refused = send(approvals_proxy, who, other, session=session)
        assert pending_of(refused) != approval_id, (who, session, other)
    assert upstream_saw(mock, marker) == 2


def test_a_denial_refuses_with_the_masked_reason_and_an_expired_grant_asks_again(approvals_proxy, mock):
    marker = uuid.uuid4().hex
    text = f"{marker}\nDROP DATABASE billing;"
    approval_id = pending_of(send(approvals_proxy, "alice", text))
    reason = f"not during the freeze; never paste {GITHUB_TOKEN}"
    denied = api(approvals_proxy, "carol", "POST", f"/api/approvals/{approval_id}/deny", json={"reason": reason})
    assert denied.status_code == 200, denied.text
    assert denied.json()["state"] == "denied"
    assert GITHUB_TOKEN not in denied.text and "not during the freeze" in denied.json()["reason"]
    refused = send(approvals_proxy, "alice", text)
    assert refused.status_code == 403 and refused.headers["x-streammask-approval-state"] == "denied"
    message = smtest.assert_anthropic_error(refused.content, "permission_error")["error"]["message"]
    assert "carol denied" in message and "not during the freeze" in message and GITHUB_TOKEN not in message
    # The denial lasts the grant time (3 s here), then the same text needs a new approval.
    time.sleep(3.2)
    again = pending_of(send(approvals_proxy, "alice", text))
    assert again != approval_id
    assert api(approvals_proxy, "carol", "POST", f"/api/approvals/{again}/approve").status_code == 200
    assert send(approvals_proxy, "alice", text).status_code == 200
    time.sleep(3.2)
    expired = pending_of(send(approvals_proxy, "alice", text))
    assert expired not in (approval_id, again)
    assert upstream_saw(mock, marker) == 1
    listed = api(approvals_proxy, "carol", "GET", "/api/approvals", params={"state": "expired"}).json()["data"]
    assert {approval_id, again} <= {a["id"] for a in listed}


def test_refusals_on_the_api(approvals_proxy):
    marker = uuid.uuid4().hex
    approval_id = pending_of(send(approvals_proxy, "dave", f"{marker} kubectl delete namespace payments"))
    path = f"/api/approvals/{approval_id}/approve"
    no_credentials = api(approvals_proxy, None, "POST", path)
    assert no_credentials.status_code == 401
    smtest.assert_anthropic_error(no_credentials.content, "authentication_error")
    assert api(approvals_proxy, None, "GET", "/api/approvals").status_code == 401
    unknown_key = api(approvals_proxy, None, "POST", path, headers={"authorization": "Bearer sk-nobody"})
    assert unknown_key.status_code == 401
    not_approver = api(approvals_proxy, "bob", "POST", path)
    assert not_approver.status_code == 403
    assert api(approvals_proxy, "bob", "GET", "/api/approvals").status_code == 403
    own = api(approvals_proxy, "dave", "POST", path)
    assert own.status_code == 403 and "own" in own.json()["error"]["message"]
    assert api(approvals_proxy, "carol", "POST", path).status_code == 200
    twice = api(approvals_proxy, "carol", "POST", f"/api/approvals/{approval_id}/deny")
    assert twice.status_code == 409
    assert api(approvals_proxy, "carol", "POST", "/api/approvals/apr_00000000000000000000000000000000/approve").status_code == 404
    assert api(approvals_proxy, "carol", "GET", "/api/approvals/../../etc").status_code == 404
    assert api(approvals_proxy, "carol", "GET", "/api/approvals", params={"state": "maybe"}).status_code == 400
    bad_body = api(approvals_proxy, "carol", "POST", path, content=b"[1,2]")
    assert bad_body.status_code == 400
    pending = api(approvals_proxy, "carol", "GET", "/api/approvals", params={"state": "pending"}).json()["data"]
    assert approval_id not in {a["id"] for a in pending}
    approved = api(approvals_proxy, "carol", "GET", "/api/approvals", params={"state": "approved"}).json()["data"]
    assert approval_id in {a["id"] for a in approved}
    too_large = httpx.post(approvals_proxy.admin_url + "/approvals/sign-in", data={"token": "x" * 100_000})
    assert too_large.status_code == 413
    # The console is not on the proxy listener.
    assert httpx.get(approvals_proxy.url + "/api/approvals", headers={"x-api-key": key("carol")}).status_code == 404


def cli(proxy, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STREAMMASK_TOKEN"}
    if token:
        env["STREAMMASK_TOKEN"] = token
    return subprocess.run(
        [str(smtest.PROXY_BIN), "approvals", "--admin", proxy.admin_url, *args],
        capture_output=True, text=True, timeout=30, env=env,
    )


def test_the_approvals_cli_lists_shows_and_decides(approvals_proxy, mock):
    marker = uuid.uuid4().hex
    first = pending_of(send(approvals_proxy, "alice", f"{marker}\nkubectl delete namespace ledger"))
    second = pending_of(send(approvals_proxy, "bob", f"{marker}\nkubectl delete namespace ledger"))
    listed = cli(approvals_proxy, "list", "--state", "pending", token=key("carol"))
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "approve-kubectl-delete-namespace" in listed.stdout
    as_json = json.loads(cli(approvals_proxy, "list", "--json", token=key("carol")).stdout)
    assert {first, second} <= {a["id"] for a in as_json["data"]}
    shown = cli(approvals_proxy, "show", first, token=key("carol"))
    assert shown.returncode == 0 and "kubectl delete namespace ledger" in shown.stdout and "alice" in shown.stdout
    approved = cli(approvals_proxy, "approve", first, "--token", key("carol"))
    assert approved.returncode == 0 and f"{first} approved by carol" in approved.stdout
    denied = cli(approvals_proxy, "deny", second, "--reason", "ask in #infra", token=key("carol"))
    assert denied.returncode == 0 and "denied by carol" in denied.stdout
    assert cli(approvals_proxy, "show", second, token=key("carol")).stdout.count("ask in #infra") == 1
    again = cli(approvals_proxy, "approve", second, token=key("carol"))
    assert again.returncode != 0 and "409" in again.stderr and "already denied" in again.stderr
    assert key("carol") not in again.stderr + again.stdout
    no_token = cli(approvals_proxy, "list")
    assert no_token.returncode != 0 and "STREAMMASK_TOKEN" in no_token.stderr
    outsider = cli(approvals_proxy, "list", token=key("bob"))
    assert outsider.returncode != 0 and "403" in outsider.stderr
    assert send(approvals_proxy, "alice", f"{marker}\nkubectl delete namespace ledger").status_code == 200
    assert send(approvals_proxy, "bob", f"{marker}\nkubectl delete namespace ledger").status_code == 403


def sign_in(proxy, who: str) -> httpx.Client:
    client = httpx.Client(base_url=proxy.admin_url, timeout=15)
    r = client.post("/approvals/sign-in", data={"token": key(who)})
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    return client


def test_console_forms_need_a_session_and_a_csrf_token(approvals_proxy):
    marker = uuid.uuid4().hex
    approval_id = pending_of(send(approvals_proxy, "alice", f"{marker}\ndrop schema analytics cascade;\n# {GITHUB_TOKEN}"))
    # A developer's token signs in to nothing.
    with httpx.Client(base_url=approvals_proxy.admin_url, timeout=15) as outsider:
        r = outsider.post("/approvals/sign-in", data={"token": key("bob")})
        assert r.status_code == 403 and "set-cookie" not in r.headers
        r = outsider.post("/approvals/sign-in", data={"token": "sk-wrong"})
        assert r.status_code == 401
    console = sign_in(approvals_proxy, "carol")
    try:
        page = console.get("/approvals")
        assert page.status_code == 200 and approval_id in page.text and "drop schema analytics" in page.text
        assert GITHUB_TOKEN not in page.text  # the preview is masked
        assert "[MASKED:github-pat-classic:" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        no_csrf = console.post(f"/approvals/{approval_id}/deny", data={"reason": "x"})
        assert no_csrf.status_code == 403
        wrong = console.post(f"/approvals/{approval_id}/deny", data={"csrf": "0" * 32})
        assert wrong.status_code == 403
        # Cookie-authenticated API POSTs need the token too.
        assert console.post(f"/api/approvals/{approval_id}/deny").status_code == 403
        done = console.post(f"/approvals/{approval_id}/approve", data={"csrf": csrf, "reason": "ok for the demo"})
        assert done.status_code == 303 and done.headers["location"] == f"/approvals/{approval_id}"
        detail = console.get(f"/approvals/{approval_id}")
        assert "Approved" in detail.text and "ok for the demo" in detail.text
        fragment = console.get("/approvals/fragment")
        assert fragment.status_code == 200 and "<html" not in fragment.text
        assert console.post("/approvals/sign-out").status_code == 303
    finally:
        console.close()
    # Without the cookie the forms are refused.
    r = httpx.post(f"{approvals_proxy.admin_url}/approvals/{approval_id}/deny", data={"csrf": csrf})
    assert r.status_code == 401


@pytest.mark.parametrize("endpoint", ["messages", "count_tokens", "batches"])
def test_approve_findings_are_never_forwarded_unapproved(approvals_proxy, mock, endpoint):
    marker = uuid.uuid4().hex
    text = f"{marker} then terraform destroy -auto-approve"
    message = {"role": "user", "content": text}
    path, body = {
        "messages": ("/v1/messages", user_request(text)),
        "count_tokens": ("/v1/messages/count_tokens", {"model": smtest.MODEL, "messages": [message]}),
        "batches": ("/v1/messages/batches", {"requests": [{"custom_id": "r1", "params": user_request(text)}]}),
    }[endpoint]
    refused = send(approvals_proxy, "alice", text, path=path, body=body)
    approval_id = pending_of(refused)
    assert upstream_saw(mock, marker) == 0
    assert api(approvals_proxy, "carol", "POST", f"/api/approvals/{approval_id}/approve").status_code == 200
    allowed = send(approvals_proxy, "alice", text, path=path, body=body)
    assert allowed.status_code < 300, allowed.text
    assert upstream_saw(mock, marker) == 1


def test_metrics_and_audit_record_every_step(proxy_factory, mock, tmp_path):
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory(
        config=approvals_config(f'[audit]\nsink = "file"\npath = "{audit}"\n'), name="approvals-audit"
    )
    before = {s: metric(proxy, "streammask_approvals_total", state=s) for s in ("pending", "approved", "denied")}
    for s in ("pending", "approved", "denied", "expired"):
        assert f'streammask_approvals_total{{state="{s}"}}' in httpx.get(proxy.admin_url + "/metrics").text
    marker = uuid.uuid4().hex
    first = pending_of(send(proxy, "alice", f"{marker} DROP DATABASE a;"))
    second = pending_of(send(proxy, "alice", f"{marker} DROP DATABASE b;"))
    api(proxy, "carol", "POST", f"/api/approvals/{first}/approve")
    api(proxy, "carol", "POST", f"/api/approvals/{second}/deny", json={"reason": f"no {GITHUB_TOKEN}"})
    used = send(proxy, "alice", f"{marker} DROP DATABASE a;")
    assert used.status_code == 200
    assert metric(proxy, "streammask_approvals_total", state="pending") == before["pending"] + 2
    assert metric(proxy, "streammask_approvals_total", state="approved") == before["approved"] + 1
    assert metric(proxy, "streammask_approvals_total", state="denied") == before["denied"] + 1
    assert metric(proxy, "streammask_approval_grants_used_total") >= 1
    assert metric(proxy, "streammask_approval_decision_seconds_count") >= 2
    wait_until(lambda: metric(proxy, "streammask_approvals_pending") == 0, 10, what="the pending gauge")

    def events():
        lines = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()] if audit.exists() else []
        return [l for l in lines if l.get("kind") == "approval"]

    wait_until(lambda: len(events()) >= 5, 10, what="approval audit records")
    seen = {(e["event"], e["approval_id"]) for e in events()}
    assert {("requested", first), ("requested", second), ("approved", first), ("denied", second), ("used", first)} <= seen
    approved = next(e for e in events() if e["event"] == "approved")
    assert approved["decided_by"] == "carol" and approved["subject"] == "alice"
    records = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()]
    forwarded = next(
        r for r in records
        if r.get("kind") != "approval" and r.get("request_id") == used.headers["x-streammask-request-id"]
    )
    assert forwarded["approvals"] == [first]
    held = [r for r in records if r.get("decision") == "approval"]
    assert len(held) >= 2
    assert GITHUB_TOKEN not in audit.read_text()


# --- hold mode -------------------------------------------------------------------------------------

def test_hold_mode_keeps_the_request_open_until_the_decision(proxy_factory, mock):
    proxy = proxy_factory(config=approvals_config(mode="hold", hold_secs=30), name="approvals-hold")
    marker = uuid.uuid4().hex
    results: dict[str, httpx.Response] = {}

    def held(name: str, text: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.__setitem__(name, send(proxy, "alice", text, timeout=60)))
        thread.start()
        return thread

    approved_thread = held("approved", f"{marker}-a\nterraform destroy -target=a")
    approval_id = pending_for(proxy, f"{marker}-a")
    time.sleep(1.0)
    assert "approved" not in results and upstream_saw(mock, f"{marker}-a") == 0
    decided_at = time.monotonic()
    assert api(proxy, "carol", "POST", f"/api/approvals/{approval_id}/approve").status_code == 200
    approved_thread.join(20)
    assert time.monotonic() - decided_at < 2.0
    assert results["approved"].status_code == 200, results["approved"].text
    assert upstream_saw(mock, f"{marker}-a") == 1

    denied_thread = held("denied", f"{marker}-d\nterraform destroy -target=d")
    denied_id = pending_for(proxy, f"{marker}-d")
    api(proxy, "carol", "POST", f"/api/approvals/{denied_id}/deny", json={"reason": "use the runbook"})
    denied_thread.join(20)
    assert results["denied"].status_code == 403 and "use the runbook" in results["denied"].text
    assert upstream_saw(mock, f"{marker}-d") == 0

    # A client that leaves while held: the approval stays pending, nothing goes upstream.
    body = json.dumps(user_request(f"{marker}-c\nterraform destroy -target=c")).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"x-api-key: {key('alice')}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
        )
        left_id = pending_for(proxy, f"{marker}-c")
    time.sleep(0.5)
    still = api(proxy, "carol", "GET", f"/api/approvals/{left_id}").json()
    assert still["state"] == "pending"
    assert upstream_saw(mock, f"{marker}-c") == 0
    proxy.assert_healthy()


def test_hold_mode_times_out_into_the_return_answer(proxy_factory, mock):
    proxy = proxy_factory(config=approvals_config(mode="hold", hold_secs=1), name="approvals-hold-short")
    marker = uuid.uuid4().hex
    started = time.monotonic()
    refused = send(proxy, "alice", f"{marker} kubectl delete ns prod")
    assert 0.9 <= time.monotonic() - started < 5
    pending_of(refused)
    assert upstream_saw(mock, marker) == 0


# --- the webhook -----------------------------------------------------------------------------------

class Hook:
    def __init__(self):
        self.posts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                hook.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_webhook_hears_of_each_new_approval_once_and_a_dead_one_changes_nothing(proxy_factory, mock):
    hook = Hook()
    proxy = proxy_factory(
        config=approvals_config(notify_webhook_url=hook.url, console_url="https://approvals.example.com/"),
        name="approvals-webhook",
    )
    marker = uuid.uuid4().hex
    first = pending_of(send(proxy, "alice", f"{marker} DROP DATABASE x;"))
    assert pending_of(send(proxy, "alice", f"{marker} DROP DATABASE x;")) == first
    second = pending_of(send(proxy, "bob", f"{marker} DROP DATABASE x;"))
    wait_until(lambda: len(hook.posts) >= 2, 10, what="two notifications")
    time.sleep(0.5)
    assert len(hook.posts) == 2
    texts = " ".join(p["text"] for p in hook.posts)
    assert f"https://approvals.example.com/approvals/{first}" in texts
    assert f"https://approvals.example.com/approvals/{second}" in texts
    assert all(isinstance(p["blocks"], list) and p["blocks"] for p in hook.posts)
    assert "DROP DATABASE" not in json.dumps(hook.posts)  # no request text leaves in a notification
    hook.server.shutdown()

    dead = proxy_factory(
        config=approvals_config(notify_webhook_url=f"http://127.0.0.1:{smtest.free_port()}/dead"),
        name="approvals-dead-webhook",
    )
    before = metric(dead, "streammask_approval_webhook_failures_total")
    refused = send(dead, "alice", f"{marker} drop schema y;")
    pending_of(refused)
    assert send(dead, "alice", f"{marker} a clean question").status_code == 200
    wait_until(lambda: metric(dead, "streammask_approval_webhook_failures_total") == before + 1, 15,
               what="the webhook failure counted")


# --- Redis: two replicas ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    from test_restore import Redis
    server = Redis(tmp_path_factory.mktemp("redis-approvals"))
    yield server
    server.stop()


def test_two_replicas_share_approvals_through_redis(proxy_factory, mock, redis):
    config = approvals_config(mode="hold", hold_secs=30, store="redis", redis_url=redis.url, redis_timeout_ms=300)
    a = proxy_factory(config=config, name="approvals-redis-a")
    b = proxy_factory(config=config, name="approvals-redis-b")
    marker = uuid.uuid4().hex
    text = f"{marker}\nterraform destroy -target=module.db"
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.__setitem__("r", send(a, "alice", text, session="s-r", timeout=60)))
    thread.start()

    def pending_on_b():
        data = api(b, "carol", "GET", "/api/approvals", params={"state": "pending"}).json()["data"]
        return next((x["id"] for x in data if marker in x["preview"]), None)

    approval_id = wait_until(pending_on_b, 15, what="the approval seen through replica B")
    assert api(b, "carol", "POST", f"/api/approvals/{approval_id}/approve").status_code == 200
    decided = time.monotonic()
    thread.join(20)
    # Released within a second of the decision (the forward to the mock included).
    assert time.monotonic() - decided < 1.0, "the held request was not released within a second"
    assert result["r"].status_code == 200, result["r"].text
    assert upstream_saw(mock, marker) == 1
    # The grant is in Redis: replica B forwards the next turn, and so does a restarted A.
    assert send(b, "alice", text, session="s-r").status_code == 200
    restarted = proxy_factory(config=config, name="approvals-redis-a", fresh=True)
    assert send(restarted, "alice", text, session="s-r").status_code == 200
    assert upstream_saw(mock, marker) == 3
    keys = [k for k in redis.cli("--scan", "--pattern", "streammask:approvals:v1:g:*").split(b"\n") if k]
    assert keys and all(0 < int(redis.cli("PTTL", k.decode()).strip()) <= 3 * 3600 * 1000 * 8 for k in keys)
    # Redis gone: approval requests get a 503 at once, everything else is served.
    redis.stop()
    down = send(b, "alice", f"{marker} DROP DATABASE z;", timeout=20)
    assert down.status_code == 503, down.text
    smtest.assert_anthropic_error(down.content, "api_error")
    assert send(b, "alice", f"{marker} an ordinary question").status_code == 200
    assert metric(b, "streammask_approval_store_failures_total") >= 1
    console = sign_in(b, "carol")
    page = console.get("/approvals")
    console.close()
    assert page.status_code == 503 and "store is unavailable" in page.text


# --- the real Claude Code CLI ----------------------------------------------------------------------

@pytest.mark.claude_code
def test_claude_code_waits_for_approval_and_continues_the_session(approvals_proxy, mock, tmp_path):
    session = str(uuid.uuid4())
    marker = uuid.uuid4().hex[:12]
    prompt = f"Ticket {marker}: run terraform destroy -target=module.web for me."
    out = run_claude(approvals_proxy.url, prompt, tmp_path, session_id=session, api_key=key("alice"))
    printed = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode != 0, printed[-2000:]
    assert "needs human approval" in printed, printed[-3000:]
    link = next(w for w in printed.split() if w.startswith(approvals_proxy.admin_url + "/approvals/apr_"))
    approval_id = link.rstrip(".").rsplit("/", 1)[1]
    assert upstream_saw(mock, marker) == 0
    # The link from Claude Code's output leads to the approval: its console page, and its API object.
    assert httpx.get(link.rstrip("."), timeout=10).status_code == 200
    shown = api(approvals_proxy, "carol", "GET", f"/api/approvals/{approval_id}").json()
    assert shown["session_id"] == session and shown["subject"] == "alice"
    assert api(approvals_proxy, "carol", "POST", f"/api/approvals/{approval_id}/approve").status_code == 200
    mock.reset()
    again = run_claude(approvals_proxy.url, prompt, tmp_path, "--resume", session, session_id="",
                       api_key=key("alice"))
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-2000:]
    turns = [r for r in mock.messages() if marker in r["body"]]
    assert len(turns) == 1, len(turns)
    follow = run_claude(approvals_proxy.url, "and now summarise", tmp_path, "--continue", session_id="",
                        api_key=key("alice"))
    assert follow.returncode == 0, follow.stderr.decode(errors="replace")[-2000:]
    assert len([r for r in mock.messages() if marker in r["body"]]) == 2
    # Another caller with the same text needs its own approval.
    other = run_claude(approvals_proxy.url, prompt, tmp_path / "bob", session_id=str(uuid.uuid4()), api_key=key("bob"))
    assert "needs human approval" in (other.stdout + other.stderr).decode(errors="replace")
    assert len([r for r in mock.messages() if marker in r["body"]]) == 2
