"""1. Every rule example, both directions, streaming and not, through the proxy with the SDK.

Examples come from `streammask rules examples` (the secrets each rule extracts). They are sent
in batches (several examples per request, separated by blank lines); a batch that fails is
re-run one example at a time so the report names the examples that fail on their own. All
failures of a test are reported at once.
"""

from __future__ import annotations

import json

import pytest

from conftest import make_client
from smtest import PLACEHOLDER_RE, has_placeholder_for, message_text, user_request

BATCH = 20
MIN_PACK_EXAMPLES = 100


def mask_examples(examples: list[dict], scope: str) -> list[dict]:
    return [
        ex
        for ex in examples
        if ex["action"] == "mask" and scope in ex["applies_to"] and ex.get("secrets")
    ]


def is_multiline(ex: dict) -> bool:
    # Private key rules hold from BEGIN to END (or to their bound when there is no END line),
    # so such an example would swallow whatever follows it in a batch.
    return "-----BEGIN" in ex["example"]


def make_batches(examples: list[dict], n: int = BATCH) -> list[list[dict]]:
    """Batches of up to `n` examples; a multi-line example only ever comes last in its batch."""
    single = [ex for ex in examples if not is_multiline(ex)]
    multi = [ex for ex in examples if is_multiline(ex)]
    batches = [single[i : i + n - 1] for i in range(0, len(single), n - 1)]
    for batch in batches:
        if multi:
            batch.append(multi.pop(0))
    batches += [[ex] for ex in multi]
    return batches


def joined(batch: list[dict]) -> str:
    # Blank lines between examples; the last one ends exactly as the rule file wrote it.
    return "\n\n".join(ex["example"] for ex in batch)


def strings_in(value) -> list[str]:
    """Every JSON string in a decoded value (keys included)."""
    out = []
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            out.extend(strings_in(v))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            out.extend(strings_in(v))
    return out


def check_text(where: str, text: str, batch: list[dict]) -> list[str]:
    """No secret reaches `where`, and each is replaced by a placeholder: its own, or — when a
    rule that covers more of the text wins the overlap (a keyword rule over a cut-off token and
    the truncation mark after it, a bearer rule over a long JWT) — one whose span holds it.
    That the rule itself masks exactly its secret is `rules check`'s job, example by example."""
    problems = []
    for ex in batch:
        for secret in ex["secrets"]:
            if secret in text:
                problems.append(f"{ex['id']}: secret {secret[:6]}… reached the {where}")
            elif not has_placeholder_for(text, secret) and not covered_by_a_placeholder(text, ex["example"], secret):
                problems.append(f"{ex['id']}: no placeholder for its secret in the {where}")
    return problems


def covered_by_a_placeholder(text: str, example: str, secret: str) -> bool:
    """Whether the example's text before its secret is followed, in `text`, by a placeholder
    (the secret's start was replaced by a wider span: a rule's, or a longer secret found
    elsewhere in the batch, which is masked wherever it occurs)."""
    before = example[: example.find(secret)]
    # The last few characters before the secret, which no rule rewrites; for a secret that
    # starts its example, the blank line `joined` puts before every example but the first.
    if not before and PLACEHOLDER_RE.match(text, 0):
        return True
    anchor = before[-8:] or "\n\n"
    at = text.find(anchor)
    while at != -1:
        if PLACEHOLDER_RE.match(text, at + len(anchor)):
            return True
        at = text.find(anchor, at + 1) if anchor else -1
    return False


def check_upstream_body(record: dict, batch: list[dict]) -> list[str]:
    body = record["body"]
    try:
        decoded = "\n".join(strings_in(json.loads(body)))
    except json.JSONDecodeError:
        return ["the upstream body is not JSON"]
    problems = []
    for ex in batch:
        for secret in ex["secrets"]:
            if secret in body or secret in decoded:
                problems.append(f"{ex['id']}: secret {secret[:6]}… reached the upstream")
    return problems


def run_batch(client, mock, batch: list[dict], direction: str, stream: bool) -> list[str]:
    """Send one batch; return its problems (empty when it passed)."""
    mock.reset()
    text = joined(batch)
    if direction == "request":
        request = user_request(text)
    else:
        mock.script({"kind": "text", "text": text})
        request = user_request("Please print the configuration examples.")
    try:
        if stream:
            with client.messages.stream(**request) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(**request)
    except Exception as exc:  # the SDK must parse every response
        return [f"{[ex['id'] for ex in batch]}: SDK error {type(exc).__name__}: {str(exc)[:300]}"]
    problems = []
    reply = message_text(message)
    problems += check_text("client", reply, batch)
    if direction == "request":
        received = mock.messages()
        if len(received) != 1:
            problems.append(f"expected 1 upstream request, the mock got {len(received)}")
        else:
            problems += check_upstream_body(received[0], batch)
    return problems


def run_all(proxy, mock, examples: list[dict], direction: str, stream: bool) -> None:
    assert examples, f"no mask examples apply to {direction}: is the rule pack loaded?"
    client = make_client(proxy)
    failures: list[str] = []
    try:
        for batch in make_batches(examples):
            if not run_batch(client, mock, batch, direction, stream):
                continue
            # Pin the failure down: which examples fail on their own?
            alone = []
            for ex in batch:
                alone += run_batch(client, mock, [ex], direction, stream)
            if alone:
                failures += alone
            else:
                failures.append(
                    f"batch {[ex['id'] for ex in batch]} failed together but passes one by one"
                )
    finally:
        client.close()
    mode = "streaming" if stream else "non-streaming"
    assert not failures, (
        f"{len(failures)} problem(s), {direction} direction, {mode}, "
        f"{len(examples)} examples:\n" + "\n".join(failures)
    )
    proxy.assert_healthy()


def test_rule_pack_has_at_least_100_examples(rule_examples):
    pack = [ex for ex in rule_examples if not ex["id"].startswith("e2e-")]  # not the suite's own
    assert len(pack) >= MIN_PACK_EXAMPLES, (
        f"`streammask rules examples` printed {len(pack)} pack examples; "
        f"the default pack should have at least {MIN_PACK_EXAMPLES}"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_request_examples_never_reach_upstream(proxy, mock, rule_examples, stream):
    run_all(proxy, mock, mask_examples(rule_examples, "request"), "request", stream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_response_examples_never_reach_client(proxy, mock, rule_examples, stream):
    run_all(proxy, mock, mask_examples(rule_examples, "response"), "response", stream)
