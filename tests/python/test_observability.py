"""7. Observability: /metrics after scripted traffic (exact counts, strict Prometheus text
format), the audit log (one record per request, findings with previews, transcripts,
rotation, session replay), JSON logs with request ids, the audit failure policy, and that the
dashboard and alert rules only use metrics the proxy exports.

One dedicated proxy (`obs`, fresh) takes exactly the scripted traffic, so its counters are
exact. Its audit log rotates at 4 KiB, so the readers are exercised over rotated files.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import conftest
import smtest
from conftest import make_client
from smtest import (
    mock_script,
    API_KEY,
    AWS_KEY_ID,
    BLOCK_PHRASE,
    BLOCK_RULE_ID,
    CURL_PIPE_SH,
    GITHUB_TOKEN,
    GITHUB_TOKEN_2,
    MODEL,
    PLACEHOLDER_RE,
    PROXY_BIN,
    REPO,
    has_placeholder_for,
    user_request,
    wait_until,
)

SESSION = "3f6c2d1e-obs-e2e-session"
SONNET = "claude-sonnet-4-5-20250929"


def parse_metrics(text: str) -> dict[tuple, float]:
    """Strictly parse a Prometheus text page into {(name, sorted labels): value}."""
    samples: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    # The parser is lenient about a few things the format forbids; check them too.
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) streammask_[a-z_]+ ", line), line
            continue
        assert re.match(r'^streammask_[a-z_]+(\{[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*\})? \S+$', line), line
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels) -> float:
    """Sum of `name` over every series whose labels include `labels`."""
    return sum(
        v for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def series(samples, name: str) -> dict[tuple, float]:
    return {ls: v for (n, ls), v in samples.items() if n == name}


class Obs:
    def __init__(self, proxy, audit: Path):
        self.proxy = proxy
        self.audit = audit
        self.ids: dict[str, str] = {}
        self.metrics_text = ""
        self.baseline_text = ""

    def records(self) -> list[dict]:
        files = sorted(self.audit.parent.glob(self.audit.name + ".*"), key=lambda p: -int(p.suffix[1:]))
        files.append(self.audit)
        out = []
        for f in files:
            if f.exists():
                for line in f.read_text().splitlines():
                    out.append(json.loads(line))
        return out

    def metrics(self) -> str:
        r = httpx.get(self.proxy.admin_url + "/metrics", timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return r.text


@pytest.fixture(scope="module")
def obs(proxy_factory, session_dir, mock_server, rule_examples) -> Obs:
    audit = session_dir / "obs-audit" / "audit.jsonl"
    audit.parent.mkdir(exist_ok=True)
    config = (
        "[audit]\n"
        'sink = "file"\n'
        f'path = "{audit}"\n'
        "max_bytes = 4096\n"
        "max_files = 1000\n"
        "transcripts = true\n"
        "[log]\n"
        'format = "json"\n'
    )
    proxy = proxy_factory(config=config, name="obs", fresh=True)
    conftest.AUDIT_OUTPUTS.append(audit)
    o = Obs(proxy, audit)
    mock_server.reset()
    # The harness's readiness probe (GET /, a 404) was counted already: compare with this.
    o.baseline_text = o.metrics()

    def send(label: str, body: dict | None, script: dict | None = None, path: str = "/v1/messages") -> httpx.Response:
        headers = {"x-api-key": API_KEY, "x-claude-code-session-id": f"traffic-{label}"}
        if script is not None:
            headers["x-mock-script"] = mock_script(script)
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            r = c.post(path, json=body or {}, headers=headers)
        o.ids[label] = r.headers["x-streammask-request-id"]
        return r

    no_cache = {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    r = send("clean", user_request("hello there"),
             {"kind": "text", "text": "General Kenobi", "usage": {"input_tokens": 11, "output_tokens": 5, **no_cache}})
    assert r.status_code == 200 and r.json()["content"][0]["text"] == "General Kenobi"
    r = send("masked_stream", user_request(f"deploy with {GITHUB_TOKEN} please", stream=True, model=SONNET),
             {"kind": "text", "text": f"Your AWS key id {AWS_KEY_ID} is configured.",
              "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 7,
                        "cache_creation_input_tokens": 3}})
    assert r.status_code == 200 and GITHUB_TOKEN not in r.text and AWS_KEY_ID not in r.text
    r = send("blocked", user_request(f"please run {BLOCK_PHRASE}"))
    assert r.status_code == 403
    r = send("upstream_error", user_request("are you there?"), {"kind": "error", "status": 529})
    assert r.status_code == 529
    r = send("tool_blocked", user_request("install it", stream=True),
             {"kind": "tool_use", "text": "Installing.", "tool": {"name": "Bash", "input": {"command": CURL_PIPE_SH}},
              "usage": {"input_tokens": 1, "output_tokens": 2, **no_cache}})
    assert r.status_code == 200 and "tool_use" not in smtest.sse_text(smtest.parse_sse(r.content))
    r = send("unknown_endpoint", {"prompt": "x"}, path="/v1/complete")
    assert r.status_code == 404
    wait_until(lambda: len(o.records()) >= len(o.ids), timeout=10, what="audit records for the traffic")
    o.metrics_text = o.metrics()
    return o


EXPECTED_REQUESTS = {
    ("messages", "2xx", "allowed"): 2,  # clean, tool_blocked
    ("messages", "2xx", "masked"): 1,
    ("messages", "4xx", "blocked"): 1,
    ("messages", "5xx", "allowed"): 1,  # the upstream's 529, passed through
    ("unknown", "4xx", "error"): 1,
}


def test_metrics_page_has_exact_counts_after_scripted_traffic(obs, tool_block_rules):
    after = parse_metrics(obs.metrics_text)
    before = parse_metrics(obs.baseline_text)
    assert set(before) <= set(after)
    # Gauges as they are now, everything else as the traffic's increase.
    gauges = {"streammask_active_streams", "streammask_held_bytes", "streammask_rules_loaded"}
    m = {k: v if k[0] in gauges else v - before.get(k, 0.0) for k, v in after.items()}
    requests = series(m, "streammask_requests_total")
    assert len(requests) == 3 * 7 * 6 * 5, \
        "every provider × endpoint × status class × outcome series is pre-built"
    # All of this traffic came through the first-party API.
    assert not [ls for ls, v in requests.items() if v and dict(ls)["provider"] != "anthropic"]
    got = {
        (dict(ls)["endpoint"], dict(ls)["status_class"], dict(ls)["outcome"]): v
        for ls, v in requests.items() if v
    }
    assert got == EXPECTED_REQUESTS
    assert value(m, "streammask_request_duration_seconds_count", endpoint="messages") == 5
    assert value(m, "streammask_request_duration_seconds_count", endpoint="unknown") == 1
    assert value(m, "streammask_upstream_ttfb_seconds_count", endpoint="messages") == 4
    assert value(m, "streammask_request_masking_seconds_count") == 5
    assert value(m, "streammask_sse_event_masking_seconds_count") >= 10
    assert value(m, "streammask_stream_peak_held_bytes_count") == 2

    gh_rule = obs_rule_of(obs, "masked_stream", "request")
    aws_rule = obs_rule_of(obs, "masked_stream", "response")
    assert value(m, "streammask_findings_total", rule=gh_rule, direction="request", action="mask") == 1
    assert value(m, "streammask_findings_total", rule=aws_rule, direction="response", action="mask") == 1
    assert value(m, "streammask_findings_total", rule=BLOCK_RULE_ID, direction="request", action="block") == 1
    assert total(m, "streammask_blocked_requests_total") == 1
    assert value(m, "streammask_blocked_requests_total", rule=BLOCK_RULE_ID) == 1
    blocked_tools = {dict(ls)["rule"]: v for ls, v in series(m, "streammask_blocked_tool_calls_total").items() if v}
    assert sum(blocked_tools.values()) == 1 and set(blocked_tools) <= tool_block_rules, blocked_tools

    # Every finding in the audit log is counted, and nothing else.
    from_audit: dict[tuple, int] = {}
    for rec in obs.records():
        if rec["request_id"] in obs.ids.values():
            for f in rec["findings"]:
                key = (f["rule"], f["direction"], f["action"])
                from_audit[key] = from_audit.get(key, 0) + 1
    from_metrics = {
        (dict(ls)["rule"], dict(ls)["direction"], dict(ls)["action"]): v
        for ls, v in series(m, "streammask_findings_total").items() if v
    }
    assert from_metrics == from_audit

    assert value(m, "streammask_late_matches_total") == 0
    assert value(m, "streammask_request_panics_total") == 0
    assert value(m, "streammask_masking_over_budget_total") == 0
    assert value(m, "streammask_active_streams") == 0
    assert value(m, "streammask_held_bytes") == 0
    errors = {dict(ls)["kind"]: v for ls, v in series(m, "streammask_upstream_errors_total").items()}
    assert errors.pop("status_5xx") == 1 and not any(errors.values()), errors
    assert len(series(m, "streammask_auth_failures_total")) == 15 and total(m, "streammask_auth_failures_total") == 0

    tokens = {
        (dict(ls)["model"], dict(ls)["group"], dict(ls)["kind"]): v
        for ls, v in series(m, "streammask_tokens_total").items() if v
    }
    assert tokens == {
        ("claude-opus-4-8", "none", "input"): 12,
        ("claude-opus-4-8", "none", "output"): 7,
        ("claude-sonnet-4-5", "none", "input"): 100,
        ("claude-sonnet-4-5", "none", "output"): 50,
        ("claude-sonnet-4-5", "none", "cache_read"): 7,
        ("claude-sonnet-4-5", "none", "cache_write"): 3,
    }
    assert series(m, "streammask_group_requests_total") == {(("group", "other"),): 0, (("group", "none"),): 6}
    ready = httpx.get(obs.proxy.admin_url + "/readyz", timeout=5).text
    assert total(m, "streammask_rules_loaded") == int(re.search(r"(\d+) rules", ready).group(1))
    assert value(m, "streammask_audit_records_total") >= 6
    assert total(m, "streammask_audit_failures_total") == 0


def obs_rule_of(obs: Obs, label: str, direction: str) -> str:
    rec = next(r for r in obs.records() if r["request_id"] == obs.ids[label])
    rules = {f["rule"] for f in rec["findings"] if f["direction"] == direction}
    assert len(rules) == 1, rec["findings"]
    return rules.pop()


def test_upstream_connect_errors_are_counted_by_kind(dead_proxy):
    def connect_errors() -> float:
        m = parse_metrics(httpx.get(dead_proxy.admin_url + "/metrics", timeout=5).text)
        return value(m, "streammask_upstream_errors_total", kind="connect")

    before = connect_errors()
    with httpx.Client(base_url=dead_proxy.url, timeout=20) as c:
        r = c.post("/v1/messages", json=user_request("anyone?"), headers={"x-api-key": API_KEY})
    assert r.status_code == 502
    assert connect_errors() == before + 1


def test_audit_records_match_requests_one_to_one(obs):
    records = [r for r in obs.records() if r["request_id"] in obs.ids.values()]
    assert sorted(r["request_id"] for r in records) == sorted(obs.ids.values()), "one record per request"
    by_label = {label: next(r for r in records if r["request_id"] == rid) for label, rid in obs.ids.items()}
    for label, rec in by_label.items():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
        assert rec["session_id"] == f"traffic-{label}"
        # Auth is off: every routed request is the anonymous caller; an unknown path is
        # refused before the caller is identified.
        anonymous = {"subject": "anonymous", "groups": [], "profile": "default"}
        assert rec["identity"] == (None if label == "unknown_endpoint" else anonymous)
        assert rec["timings"]["total_ms"] >= 0
        # An unknown endpoint is refused before its body is read.
        assert (rec["bytes"]["request"] > 0) == (label != "unknown_endpoint")
        assert rec["bytes"]["response"] > 0
    assert [by_label[k]["decision"] for k in ("clean", "masked_stream", "blocked", "upstream_error", "tool_blocked", "unknown_endpoint")] == [
        "allowed", "masked", "blocked", "allowed", "allowed", "error"]
    assert [by_label[k]["status"] for k in ("clean", "masked_stream", "blocked", "upstream_error", "unknown_endpoint")] == [200, 200, 403, 529, 404]
    assert by_label["upstream_error"]["upstream_error"] == "status_5xx"
    assert by_label["blocked"]["blocked_rule"] == BLOCK_RULE_ID
    assert by_label["tool_blocked"]["tools_blocked"] == 1
    assert by_label["unknown_endpoint"]["endpoint"] == "unknown"

    masked = by_label["masked_stream"]
    assert masked["streamed"] is True and masked["model"] == SONNET and masked["endpoint"] == "messages"
    assert masked["usage"] == {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 7,
                               "cache_creation_input_tokens": 3}
    assert masked["timings"]["upstream_ttfb_ms"] > 0 and masked["bytes"]["response"] > 0
    req = next(f for f in masked["findings"] if f["direction"] == "request")
    assert req["path"] == "messages[0].content" and req["action"] == "mask" and req["rewritten"]
    assert req["preview"] == f"ghp_…({len(GITHUB_TOKEN)} chars)"
    assert has_placeholder_for(req["placeholder"], GITHUB_TOKEN)
    resp = next(f for f in masked["findings"] if f["direction"] == "response")
    # The preview shows only what the rule's pattern fixes: (?:AKIA|ABIA|ACCA) gives "A".
    assert resp["preview"] == f"A…({len(AWS_KEY_ID)} chars)" and has_placeholder_for(resp["placeholder"], AWS_KEY_ID)

    # Transcripts: the masked request as forwarded, the masked response as the client got it.
    t = masked["transcript"]
    assert t["request"]["messages"][0]["content"] == f"deploy with {req['placeholder']} please"
    assert t["response"]["content"] == [{"type": "text", "text": f"Your AWS key id {resp['placeholder']} is configured."}]
    tool = by_label["tool_blocked"]["transcript"]["response"]
    assert [b["type"] for b in tool["content"]] == ["text", "text"] and tool["stop_reason"] == "end_turn"
    assert "blocked" in tool["content"][1]["text"]
    assert "transcript" not in by_label["blocked"] or "response" not in by_label["blocked"]["transcript"]
    assert by_label["clean"]["transcript"]["response"]["content"][0]["text"] == "General Kenobi"
    # 4 KiB rotation: the records above span several files, all read back.
    assert list(obs.audit.parent.glob("audit.jsonl.*")), "the audit log never rotated"


def test_audit_replay_prints_a_session_turn_by_turn(obs, mock_server):
    mock_server.reset()
    headers = {"x-claude-code-session-id": SESSION}
    turns = [
        (f"Set up CI with my token {GITHUB_TOKEN_2}", "Done: CI is configured."),
        ("Now add a lint step", "Added a lint step."),
        ("Thanks, that is all", "You're welcome."),
    ]
    messages: list[dict] = []
    ids = []
    with make_client(obs.proxy) as client:
        for n, (user, answer) in enumerate(turns):
            messages.append({"role": "user", "content": user})
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=256, messages=messages,
                extra_headers={**headers, "x-mock-script": mock_script({"kind": "text", "text": answer})},
            )
            ids.append(raw.headers["x-streammask-request-id"])
            reply = raw.parse()
            messages.append({"role": "assistant", "content": reply.content[0].text})
    wait_until(lambda: {r["request_id"] for r in obs.records()} >= set(ids), timeout=10, what="session records")
    out = subprocess.run(
        [str(PROXY_BIN), "audit", "replay", "--session", SESSION, "--file", str(obs.audit)],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert GITHUB_TOKEN_2 not in text and has_placeholder_for(text, GITHUB_TOKEN_2)
    placeholder = PLACEHOLDER_RE.search(text).group(0)
    expected = [f"session {SESSION}: 3 request(s)"]
    for n, (user, answer) in enumerate(turns):
        expected += [f"=== turn {n + 1} · ", ids[n], "user: " + user.replace(GITHUB_TOKEN_2, placeholder), "assistant: " + answer]
    position = 0
    for piece in expected:
        found = text.find(piece, position)
        assert found >= 0, f"{piece!r} missing or out of order in:\n{text}"
        position = found + len(piece)
    # Each turn shows only what is new: the first user message appears once.
    assert text.count("Set up CI") == 1, text

    show = subprocess.run(
        [str(PROXY_BIN), "audit", "show", ids[1], "--file", str(obs.audit)],
        capture_output=True, text=True, timeout=30,
    )
    assert show.returncode == 0, show.stderr
    assert ids[1] in show.stdout and "user: Now add a lint step" in show.stdout
    assert "assistant: Done: CI is configured." in show.stdout  # the history as the model saw it
    assert "assistant: Added a lint step." in show.stdout
    missing = subprocess.run(
        [str(PROXY_BIN), "audit", "show", "smreq_nope", "--file", str(obs.audit)],
        capture_output=True, text=True, timeout=30,
    )
    assert missing.returncode != 0 and "no audit record" in missing.stderr


def test_logs_are_json_lines_carrying_the_request_id(obs):
    lines = [l for l in obs.proxy.stderr_log.read_text().splitlines() if l.strip()]
    # Every line is one JSON object, except the start-up banner printed before logging starts.
    parsed = [json.loads(l) for l in lines if not l.startswith("streammask: listening on ")]
    assert len(parsed) >= len(lines) - 1
    request_lines = [p for p in parsed if p.get("fields", {}).get("message") == "request"]
    logged = {p["fields"]["request_id"] for p in request_lines}
    assert set(obs.ids.values()) <= logged
    for p in parsed:
        if p.get("target", "").startswith("streammask::proxy"):
            rid = p.get("fields", {}).get("request_id") or p.get("span", {}).get("request_id")
            assert rid and rid.startswith("smreq_"), p


def test_planted_example_secrets_stay_out_of_audit_and_metrics(obs, rule_examples, mock_server):
    """Rule-pack examples (mask and approve rules, which a request forwards unmasked for the
    approver) through the audit proxy in both directions; none may reach the audit file, its
    transcripts or /metrics."""
    picked = [
        ex for ex in rule_examples
        if ex["action"] in ("mask", "approve") and ex["secrets"] and "\n" not in ex["example"]
        and "request" in ex["applies_to"] and "response" in ex["applies_to"]
    ][:40]
    assert len(picked) >= 20
    text = "\n".join(ex["example"] for ex in picked)
    mock_server.reset()
    with httpx.Client(base_url=obs.proxy.url, timeout=30) as c:
        r = c.post("/v1/messages", json=user_request(text, stream=True),
                   headers={"x-api-key": API_KEY, "x-mock-script": mock_script({"kind": "text", "text": text})})
    assert r.status_code == 200
    rid = r.headers["x-streammask-request-id"]
    wait_until(lambda: any(x["request_id"] == rid for x in obs.records()), timeout=10, what="the record")
    rec = next(x for x in obs.records() if x["request_id"] == rid)
    assert {f["direction"] for f in rec["findings"]} == {"request", "response"}
    assert rec["transcript"]["request"] and rec["transcript"]["response"]["content"]
    secrets = {s for ex in picked for s in ex["secrets"] if len(s) >= 8}
    audit_text = "".join(p.read_text() for p in obs.audit.parent.glob("audit.jsonl*"))
    metrics_text = obs.metrics()
    leaks = [s[:6] for s in secrets if s in audit_text or s in metrics_text]
    assert not leaks, f"secrets (first 6 chars) in the audit log or /metrics: {leaks}"
    for s in (GITHUB_TOKEN, GITHUB_TOKEN_2, AWS_KEY_ID):
        assert s not in audit_text and s not in metrics_text


# --- the audit sink failing ----------------------------------------------------------------

def _full_sink_config(on_failure: str) -> str:
    # /dev/full opens fine and fails every write with ENOSPC: a full disk.
    return f'[audit]\nsink = "file"\npath = "/dev/full"\non_failure = "{on_failure}"\n'


def test_failing_audit_sink_is_counted_and_traffic_continues(proxy_factory, mock):
    proxy = proxy_factory(config=_full_sink_config("continue"), name="audit-continue")
    with make_client(proxy) as client:
        for _ in range(5):
            assert client.messages.create(**user_request("still served")).content[0].text == "still served"

    def failures() -> float:
        m = parse_metrics(httpx.get(proxy.admin_url + "/metrics", timeout=5).text)
        return value(m, "streammask_audit_failures_total", reason="write")

    wait_until(lambda: failures() >= 1, timeout=10, what="the audit failure metric")
    assert "audit log: " in proxy.log_text() and "failed" in proxy.log_text()
    proxy.assert_healthy()


def test_failing_audit_sink_refuses_traffic_when_configured(proxy_factory, mock):
    proxy = proxy_factory(config=_full_sink_config("refuse"), name="audit-refuse")
    statuses = []
    with httpx.Client(base_url=proxy.url, timeout=20, headers={"x-api-key": API_KEY}) as c:
        def refused() -> bool:
            r = c.post("/v1/messages", json=user_request("regulated"))
            statuses.append(r.status_code)
            if r.status_code == 503:
                smtest.assert_anthropic_error(r.content, "overloaded_error")
                assert "audit" in r.json()["error"]["message"]
                return True
            assert r.status_code == 200
            return False

        wait_until(refused, timeout=10, interval=0.1, what="a 503 once the audit sink failed")
        # Refused requests never reach the upstream.
        before = mock.stats()["requests"]
        assert c.post("/v1/messages", json=user_request("again")).status_code == 503
        assert mock.stats()["requests"] == before
    # (The first 503 may come at once: the harness's readiness probe was audited too.)
    proxy.assert_healthy()


# --- dashboard and alert rules ---------------------------------------------------------------

PROMQL_WORDS = {
    "sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "le", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "max", "min", "avg", "count", "topk", "bottomk",
    "clamp_min", "clamp_max", "abs", "offset", "bool", "time", "vector", "scalar", "absent", "delta",
    "deriv", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
    "label_replace", "changes", "resets", "sort", "sort_desc", "round", "ceil", "floor", "quantile",
}


def promql_metric_names(expr: str) -> set[str]:
    # Metrics named by a `{__name__=~"a|b"}` matcher (one selector over several counters).
    by_name = {n for m in re.findall(r'__name__\s*=~?\s*"([^"]*)"', expr) for n in m.split("|")}
    expr = re.sub(r'"[^"]*"', '""', expr)        # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)        # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)       # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)            # Grafana variables
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    names = {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"\d+|e\d*|s|m|h|d", n)}
    return (names - {"__name__"}) | by_name


def dashboard_and_alert_exprs() -> list[tuple[str, str]]:
    exprs = []
    for path in sorted((REPO / "deploy" / "grafana").glob("*.json")):
        def walk(node):
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str):
                    exprs.append((path.name, node["expr"]))
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(json.loads(path.read_text()))
    for path in sorted((REPO / "deploy" / "prometheus").glob("*.yml")):
        for m in re.finditer(r"^\s*expr:\s*(\|?)(.*)$", path.read_text(), re.M):
            exprs.append((path.name, m.group(2)))
    return exprs


def test_dashboard_and_alerts_use_only_exported_metrics(obs):
    exprs = dashboard_and_alert_exprs()
    assert len(exprs) >= 15, exprs
    exported = {name for name, _ in parse_metrics(obs.metrics()).keys()}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported} | exported
    used = set()
    for where, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            assert name.startswith("streammask_"), f"{where}: {name} in {expr!r}"
            assert name in exported or name in families, f"{where}: {name} is not on /metrics"
        used |= names
    # Every metric the issue asks for is on the dashboard.
    for needed in ["streammask_requests_total", "streammask_request_duration_seconds_bucket",
                   "streammask_request_masking_seconds_bucket", "streammask_findings_total",
                   "streammask_blocked_requests_total", "streammask_blocked_tool_calls_total",
                   "streammask_active_streams", "streammask_held_bytes", "streammask_late_matches_total",
                   "streammask_tokens_total", "streammask_auth_failures_total", "streammask_upstream_errors_total"]:
        assert needed in used, f"{needed} is on no panel or alert"


def test_a_fresh_proxy_already_exports_every_metric_the_dashboard_and_alerts_name(proxy_factory):
    """Before any traffic: a series that appears only with the first event leaves rates empty
    and alerts silent, so every name a panel or alert uses must be on /metrics at start-up."""
    fresh = proxy_factory(name="fresh-metrics", fresh=True)
    exported = {name for name, _ in parse_metrics(httpx.get(fresh.admin_url + "/metrics", timeout=10).text)}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported} | exported
    used = set()
    for _, expr in dashboard_and_alert_exprs():
        used |= promql_metric_names(expr)
    missing = sorted(n for n in used if n not in families)
    assert not missing, f"not on a fresh proxy's /metrics: {missing}"


def test_audit_previews_name_the_rule_of_the_callers_own_profile(proxy_factory, session_dir, mock_server):
    """A profile that disables a rule numbers the pack's rules afresh. A finding of that
    profile must still be previewed with its own rule's prefix, also after a caller of the
    default profile was audited first (a preview table filled from the first engine seen used
    to show the prefix of whatever default rule had the same index)."""
    audit = session_dir / "profiles-audit" / "audit.jsonl"
    audit.parent.mkdir(exist_ok=True)
    upstream_key = session_dir / "profiles-upstream.key"
    upstream_key.write_text("sk-ant-upstream-profiles-test")
    keys = {"dev": "sm-dev-key-0123456789", "contractor": "sm-contractor-key-0123456789"}
    config = f"""
[upstream]
api_key_file = "{upstream_key}"

[auth]
mode = "static_keys"

[[auth.static_keys]]
subject = "dev"
sha256 = "{hashlib.sha256(keys['dev'].encode()).hexdigest()}"

[[auth.static_keys]]
subject = "contractor"
sha256 = "{hashlib.sha256(keys['contractor'].encode()).hexdigest()}"
groups = ["contractors"]

[[profiles]]
name = "contractors"
groups = ["contractors"]
disable_rules = ["anthropic-api-key"]

[audit]
sink = "file"
path = "{audit}"
"""
    proxy = proxy_factory(config=config, name="profiles-audit", fresh=True)
    conftest.AUDIT_OUTPUTS.append(audit)
    ids = {}
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        for caller in ("dev", "contractor"):
            r = c.post(
                "/v1/messages",
                json=user_request(f"my token is {GITHUB_TOKEN}"),
                headers={"x-api-key": keys[caller]},
            )
            assert r.status_code == 200, r.text
            ids[caller] = r.headers["x-streammask-request-id"]

    def records():
        lines = audit.read_text().splitlines() if audit.exists() else []
        return {rec["request_id"]: rec for rec in map(json.loads, lines)}

    wait_until(lambda: set(ids.values()) <= set(records()), timeout=10, what="both audit records")
    by_id = records()
    for caller, profile in (("dev", "default"), ("contractor", "contractors")):
        record = by_id[ids[caller]]
        assert record["identity"]["profile"] == profile
        request_findings = [f for f in record["findings"] if f["direction"] == "request"]
        assert [f["rule"] for f in request_findings] == ["github-pat-classic"], record
        assert request_findings[0]["preview"] == f"ghp_…({len(GITHUB_TOKEN)} chars)", (caller, record)
    proxy.assert_healthy()
