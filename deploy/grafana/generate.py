#!/usr/bin/env python3
"""Generates streammask.json (the Grafana dashboard). Edit here, run `python3 deploy/grafana/generate.py` from the repo root, commit both."""
import json
panels=[]
y=0
DS={"type":"prometheus","uid":"${datasource}"}
def row(title):
    global y
    panels.append({"type":"row","title":title,"collapsed":False,"gridPos":{"h":1,"w":24,"x":0,"y":y},"id":len(panels)+1,"panels":[]})
    y+=1
def ts(title, targets, unit="short", w=12, x=0, stack=False, desc=""):
    panels.append({"type":"timeseries","title":title,"description":desc,"id":len(panels)+1,"datasource":DS,
       "gridPos":{"h":8,"w":w,"x":x,"y":y},
       "fieldConfig":{"defaults":{"unit":unit,"custom":{"stacking":{"mode":"normal" if stack else "none"}}},"overrides":[]},
       "targets":[{"refId":chr(65+i),"expr":e,"legendFormat":l,"datasource":DS} for i,(e,l) in enumerate(targets)]})
def stat(title, expr, unit="short", w=6, x=0, thresholds=None, desc=""):
    panels.append({"type":"stat","title":title,"description":desc,"id":len(panels)+1,"datasource":DS,
       "gridPos":{"h":4,"w":w,"x":x,"y":y},
       "fieldConfig":{"defaults":{"unit":unit,"thresholds":{"mode":"absolute","steps":thresholds or [{"color":"green","value":None}]}},"overrides":[]},
       "targets":[{"refId":"A","expr":expr,"datasource":DS}]})
def s(m, extra=""):
    return m + '{job=~"$job"' + extra + '}'
RI="[$__rate_interval]"
def rate(m, extra=""):
    return "rate(" + s(m, extra) + RI + ")"
def q(p, m, by="le"):
    return "histogram_quantile(%s, sum by (%s) (%s))" % (p, by, rate(m))
red=[{"color":"green","value":None},{"color":"red","value":1}]
REQ="streammask_requests_total"
row("Overview")
stat("Requests/s", "sum(%s)" % rate(REQ), "reqps", x=0)
stat("5xx ratio", "sum(%s) / clamp_min(sum(%s), 1e-9)" % (rate(REQ, ',status_class="5xx"'), rate(REQ)), "percentunit", x=6)
stat("Active streams", "sum(%s)" % s("streammask_active_streams"), x=12)
stat("Late matches (should be 0)", "sum(increase(%s[$__range]))" % s("streammask_late_matches_total"), x=18, thresholds=red,
     desc="Secrets whose first bytes had already been sent to a client when the match completed.")
y+=4
row("Traffic and outcomes")
ts("Requests by outcome", [("sum by (outcome) (%s)" % rate(REQ), "{{outcome}}")], "reqps", stack=True)
ts("Requests by provider, endpoint and status class", [("sum by (provider, endpoint, status_class) (%s)" % rate(REQ), "{{provider}} {{endpoint}} {{status_class}}")], "reqps", x=12,
   desc="provider: anthropic (first-party API), bedrock or vertex.")
y+=8
ts("Requests by caller group", [("sum by (group) (%s)" % rate("streammask_group_requests_total"), "{{group}}")], "reqps", stack=True)
ts("Errors: 5xx and the proxy's own errors", [
    ("sum by (endpoint) (%s)" % rate(REQ, ',status_class="5xx"'), "5xx {{endpoint}}"),
    ("sum by (endpoint) (%s)" % rate(REQ, ',outcome="error"'), "proxy error {{endpoint}}")], "reqps", x=12)
y+=8
row("Latency")
ts("Request duration p50 / p99", [
    (q("0.5", "streammask_request_duration_seconds_bucket", "le, endpoint"), "p50 {{endpoint}}"),
    (q("0.99", "streammask_request_duration_seconds_bucket", "le, endpoint"), "p99 {{endpoint}}")], "s")
ts("Upstream time to first byte p50 / p99", [
    (q("0.5", "streammask_upstream_ttfb_seconds_bucket"), "p50"),
    (q("0.99", "streammask_upstream_ttfb_seconds_bucket"), "p99")], "s", x=12)
y+=8
ts("Added latency: masking per request p50 / p99", [
    (q("0.5", "streammask_request_masking_seconds_bucket"), "p50"),
    (q("0.99", "streammask_request_masking_seconds_bucket"), "p99"),
    ("sum(%s) / clamp_min(sum(%s), 1e-9)" % (rate("streammask_request_masking_seconds_sum"), rate("streammask_request_masking_seconds_count")), "mean")], "s",
    desc="Time the proxy itself spends masking a request body and its response.")
ts("Added latency: per SSE event p50 / p99", [
    (q("0.5", "streammask_sse_event_masking_seconds_bucket"), "p50"),
    (q("0.99", "streammask_sse_event_masking_seconds_bucket"), "p99")], "s", x=12)
y+=8
row("Findings and blocks")
ts("Findings by rule and direction (top 15)", [("topk(15, sum by (rule, direction, action) (%s))" % rate("streammask_findings_total"), "{{rule}} {{direction}} ({{action}})")], "ops")
ts("Blocked requests and tool calls by rule", [
    ("sum by (rule) (%s)" % rate("streammask_blocked_requests_total"), "request {{rule}}"),
    ("sum by (rule) (%s)" % rate("streammask_blocked_tool_calls_total"), "tool call {{rule}}")], "ops", x=12)
y+=8
row("Restore")
ts("Placeholders restored (by rule) and left masked (by reason)", [
    ("sum by (rule) (%s)" % rate("streammask_placeholders_restored_total"), "restored {{rule}}"),
    ("sum by (reason) (%s)" % rate("streammask_placeholders_unrestored_total"), "left masked: {{reason}}")], "ops",
    desc="Secrets given back in their owner's own tool calls; unknown = another caller's, expired or made up.")
ts("Restore vault failures", [("sum(%s)" % rate("streammask_restore_store_failures_total"), "requests")], "reqps", x=12,
    desc="Requests for which the restore vault (memory or Redis) could not be read or written: they restored only what they carried.")
y+=8
row("Approvals")
stat("Pending approvals", "max(%s)" % s("streammask_approvals_pending"), x=0,
     thresholds=[{"color":"green","value":None},{"color":"orange","value":1}],
     desc="Approvals waiting for a decision (replicas sharing a Redis report the same number, hence max).")
stat("Decision time p50", q("0.5", "streammask_approval_decision_seconds_bucket"), "s", x=6,
     desc="From the request that needed approval to the approver's decision.")
stat("Webhook failures", "sum(increase(%s[$__range]))" % s("streammask_approval_webhook_failures_total"), x=12, thresholds=red)
stat("Approvals store failures", "sum(increase(%s[$__range]))" % s("streammask_approval_store_failures_total"), x=18, thresholds=red,
     desc="Requests needing approval refused with 503 because the approvals store (Redis) did not answer.")
y+=4
ts("Approvals by state", [
    ("sum by (state) (%s)" % rate("streammask_approvals_total"), "{{state}}"),
    ("sum(%s)" % rate("streammask_approval_grants_used_total"), "requests forwarded on a grant")], "ops",
    desc="pending = a new approval was requested; approved/denied = decisions; expired = nobody decided in time.")
ts("Decision time", [
    (q("0.5", "streammask_approval_decision_seconds_bucket"), "p50"),
    (q("0.9", "streammask_approval_decision_seconds_bucket"), "p90")], "s", x=12)
y+=8
row("Streaming")
ts("Active streams", [("sum(%s)" % s("streammask_active_streams"), "streams")])
ts("Held bytes now, and peak held per stream p99", [
    ("sum(%s)" % s("streammask_held_bytes"), "held now"),
    (q("0.99", "streammask_stream_peak_held_bytes_bucket"), "peak per stream p99")], "bytes", x=12)
y+=8
ts("Late matches", [("sum(increase(%s%s))" % (s("streammask_late_matches_total"), RI), "late matches")])
ts("Upstream errors by kind", [("sum by (kind) (%s)" % rate("streammask_upstream_errors_total"), "{{kind}}")], "ops", x=12)
y+=8
row("Tokens and callers")
ts("Tokens/s by model and kind", [("sum by (model, kind) (%s)" % rate("streammask_tokens_total"), "{{model}} {{kind}}")], "short", stack=True)
ts("Tokens/s by caller group", [("sum by (group) (%s)" % rate("streammask_tokens_total"), "{{group}}")], "short", x=12, stack=True)
y+=8
ts("Auth failures by reason", [("sum by (reason) (%s)" % rate("streammask_auth_failures_total"), "{{reason}}")], "ops")
ts("Audit log: records written and lost", [
    ("sum(%s)" % rate("streammask_audit_records_total"), "written"),
    ("sum by (reason) (%s)" % rate("streammask_audit_failures_total"), "lost: {{reason}}")], "ops", x=12)
y+=8
ts("Rules loaded by action", [("max by (action) (%s)" % s("streammask_rules_loaded"), "{{action}}")], "short")
ts("Rule pack per replica, and reloads", [
    ("sum by (checksum) (%s)" % s("streammask_rules_info"), "replicas on pack {{checksum}}"),
    ("sum by (result) (increase(%s%s))" % (s("streammask_config_reloads_total"), RI), "reloads {{result}}")], "short", x=12,
    desc="Replicas running each rule-pack checksum (one line once a rollout or reload has reached every replica), and reloads by result.")
y+=8
ts("Streams ended at the shutdown deadline", [("sum(increase(%s%s))" % (s("streammask_shutdown_cut_streams_total"), RI), "streams")], "short", w=24,
   desc="Streams still open when shutdown.grace_secs ran out, ended with an overloaded_error event (clients retry). Nonzero on every rollout means grace_secs is shorter than your streams.")
dash={"title":"streammask","uid":"streammask","schemaVersion":39,"version":1,"editable":True,"tags":["streammask"],
 "time":{"from":"now-6h","to":"now"},"refresh":"30s","timezone":"utc",
 "templating":{"list":[
   {"name":"datasource","type":"datasource","query":"prometheus","label":"Data source"},
   {"name":"job","type":"query","label":"Job","datasource":DS,
    "query":{"query":"label_values(streammask_requests_total, job)","refId":"job"},"definition":"label_values(streammask_requests_total, job)",
    "includeAll":True,"multi":True,"allValue":".*","current":{"text":"All","value":"$__all"},"refresh":2}]},
 "annotations":{"list":[]},"panels":panels}
open("deploy/grafana/streammask.json","w").write(json.dumps(dash,indent=2, ensure_ascii=False)+"\n")
