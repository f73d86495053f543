"""6. No planted secret appears anywhere in the proxies' own output.

Runs last (marker `last`, see conftest.pytest_collection_modifyitems): it reads the stdout and
stderr logs of every proxy process the session started, every audit log (and its rotated
files) and the default proxy's /metrics page, and greps them for every planted secret (the
rule pack's example secrets and the specific tests' secrets).
"""

from __future__ import annotations

import httpx
import pytest

import conftest
import smtest


@pytest.mark.last
def test_no_planted_secret_in_any_proxy_output(rule_examples, proxy):
    # `proxy` makes sure at least one proxy ran (and logged) even when run alone.
    for ex in rule_examples:
        smtest.plant(*ex.get("secrets", []))
    secrets = sorted(s for s in smtest.PLANTED if len(s) >= 8)
    assert smtest.GITHUB_TOKEN in secrets
    logs = [p for p in conftest.PROXY_LOGS if p.exists()]
    assert logs, "no proxy log files were written"
    for audit in conftest.AUDIT_OUTPUTS:
        logs += sorted(audit.parent.glob(audit.name + "*"))
    metrics = conftest.Path(logs[0]).parent / "default-proxy-metrics.txt"
    page = httpx.get(proxy.admin_url + "/metrics", timeout=10)
    assert page.status_code == 200 and "streammask_requests_total" in page.text
    metrics.write_text(page.text)
    logs.append(metrics)
    total = 0
    leaks = []
    for path in logs:
        text = path.read_text(errors="replace")
        total += len(text)
        for secret in secrets:
            if secret in text:
                leaks.append(f"{path.name}: secret starting {secret[:6]!r} ({len(secret)} chars)")
    assert total > 0, "the proxies logged nothing at all"
    assert not leaks, "planted secrets in proxy output:\n" + "\n".join(leaks)
