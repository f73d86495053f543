"""Data beyond credentials, end to end through the proxy to the mock: personal data with
validators (on only where a profile enables the `pii` tag), the organisation's own terms
(`[[dictionaries]]`, including a generated list of 100,000 terms) and protected source code
(`[[protected_code]]`, fingerprints of a tree: a 15-line excerpt is refused, 3 lines and
unrelated code pass).

Every personal-data value is synthetic: the check digits are computed here."""

from __future__ import annotations

import json
import random
import textwrap
import time

import httpx
import pytest

import conftest
from conftest import make_client
from smtest import (
    API_KEY,
    REPO,
    assert_anthropic_error,
    has_placeholder_for,
    message_text,
    plant,
    user_request,
)

PII_CONFIG = '[[profiles]]\nname = "default"\nenable_tags = ["pii"]\n'


# --- synthetic values with valid check digits --------------------------------------------------

def luhn_complete(body: str) -> str:
    """`body` plus the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    return f"{country}{check:02d}{bban}"


def grouped(value: str, size: int = 4, sep: str = " ") -> str:
    return sep.join(value[i:i + size] for i in range(0, len(value), size))


CARD = luhn_complete("455601823497201")            # Visa, 16 digits
CARD_GROUPED = grouped(luhn_complete("522488119237645"), sep="-")   # Mastercard 52…
IBAN = iban("DE", "370400440532013000")             # 22 characters
SSN = "512-48-3907"
EMAIL = "marta.kowalska@tarnowbikes.pl"
PHONE = "+44 20 7946 0958"

# (kind, rule id, value as it appears)
POSITIVES = [
    ("card", "pii-payment-card", CARD),
    ("card-grouped", "pii-payment-card", CARD_GROUPED),
    ("iban", "pii-iban", grouped(IBAN)),
    ("ssn", "pii-us-ssn", SSN),
    ("email", "pii-email", EMAIL),
    ("phone", "pii-phone", PHONE),
]

BAD_LUHN = CARD[:-1] + str((int(CARD[-1]) + 1) % 10)
NEGATIVES = [
    ("luhn-off-by-one", f"card {BAD_LUHN} declined"),
    ("test-card", "use 4242 4242 4242 4242 in the sandbox"),
    ("no-issuer", f"order {luhn_complete('999912345678901')} shipped"),
    ("iban-bad-check", "IBAN " + grouped(IBAN[:2] + f"{(int(IBAN[2:4]) + 1) % 100:02d}" + IBAN[4:])),
    ("ssn-area-000", "SSN 000-48-3907"),
    ("ssn-area-666", "SSN 666-48-3907"),
    ("reserved-email", "mail jane@example.com or ops@corp.test"),
    ("noreply", "Author: dev <12345+dev@users.noreply.github.com>"),
    ("scp-remote", "git clone git@github.com:acme/widgets.git"),
    ("npm-spec", "npm i @scope/pkg@1.2.3 lodash@4.17.21"),
    ("image", "background: url(icon@2x.png)"),
    ("version-plus", "bumped to 1.2.3+44 and 2 + 44 = 46"),
]


def _post(proxy, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        return c.post("/v1/messages", content=body,
                      headers={"x-api-key": API_KEY, "content-type": "application/json"})


@pytest.fixture(scope="module")
def pii_proxy(proxy_factory):
    return proxy_factory(config=PII_CONFIG, name="pii")


@pytest.mark.parametrize("kind,rule,value", POSITIVES, ids=[p[0] for p in POSITIVES])
def test_personal_data_is_masked_in_requests_only_where_a_profile_enables_it(
    pii_proxy, proxy, mock, kind, rule, value
):
    plant(value)
    text = f"Customer ticket #4411: please update the record, value {value} ."
    body = json.dumps(user_request(text)).encode()
    r = _post(pii_proxy, body)
    assert r.status_code == 200, r.text
    sent = mock.messages()[-1]["body"]
    assert value not in sent
    assert f"[MASKED:{rule}:" in sent, sent
    assert has_placeholder_for(sent, value)
    # Without the tag nothing changes: the very bytes reach the upstream.
    r = _post(proxy, body)
    assert r.status_code == 200, r.text
    assert mock.messages()[-1]["body"] == body.decode()


@pytest.mark.parametrize("kind,rule,value", POSITIVES, ids=[p[0] for p in POSITIVES])
def test_personal_data_split_across_streamed_deltas_never_reaches_the_client(
    pii_proxy, mock, kind, rule, value
):
    plant(value)
    reply = f"I found the customer: {value} on file."
    mock.script({"kind": "text", "text": reply, "max_delta": 3})
    with make_client(pii_proxy) as client:
        with client.messages.stream(**user_request("look the customer up")) as stream:
            streamed = "".join(stream.text_stream)
            final = message_text(stream.get_final_message())
    for seen in (streamed, final):
        assert value not in seen
        assert f"[MASKED:{rule}:" in seen, seen
        assert seen.startswith("I found the customer: ") and seen.endswith(" on file.")


@pytest.mark.parametrize("kind,text", NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_values_the_validators_refuse_pass_byte_identical(pii_proxy, mock, kind, text):
    body = json.dumps(user_request(f"Note: {text}")).encode()
    r = _post(pii_proxy, body)
    assert r.status_code == 200, r.text
    assert mock.messages()[-1]["body"] == body.decode()


def test_national_phone_numbers_need_a_profile_region(proxy_factory, mock):
    national = "(201) 555-0123"
    plant(national)
    body = json.dumps(user_request(f"call me on {national} tomorrow")).encode()
    without = proxy_factory(config=PII_CONFIG, name="pii")
    assert _post(without, body).status_code == 200
    assert mock.messages()[-1]["body"] == body.decode()
    with_region = proxy_factory(config=PII_CONFIG + 'phone_region = "US"\n', name="pii-us")
    assert _post(with_region, body).status_code == 200
    sent = mock.messages()[-1]["body"]
    assert national not in sent and "[MASKED:pii-phone-national:" in sent


# --- dictionaries ----------------------------------------------------------------------------------

SYLLABLES = ["ka", "zo", "ri", "ven", "tal", "mu", "qui", "dor", "xan", "pe", "lo", "brim",
             "sa", "tor", "vel", "ny", "gra", "fen", "os", "ul"]


def generated_terms(count: int, seed: int = 20) -> list[str]:
    """`count` distinct made-up names (customer-name shaped, two words for one in ten)."""
    rng = random.Random(seed)
    terms: set[str] = set()
    while len(terms) < count:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 5))).capitalize()
        if rng.random() < 0.1:
            word += " " + "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        terms.add(word)
    return sorted(terms)


@pytest.fixture(scope="module")
def dictionary_proxy(proxy_factory, session_dir):
    names = session_dir / "codenames.txt"
    names.write_text("# internal code names\nProject Falcon\nOsprey\nacme-internal.corp\n")
    customers = session_dir / "customers.txt"
    terms = generated_terms(100_000)
    customers.write_text("\n".join(terms) + "\n")
    config = (
        f'[[dictionaries]]\nid = "codenames"\npath = "{names}"\n\n'
        f'[[dictionaries]]\nid = "customers"\npath = "{customers}"\ncase_sensitive = true\n'
    )
    return proxy_factory(config=config, name="dictionaries"), terms


def test_dictionary_terms_are_masked_the_same_way_everywhere(dictionary_proxy, mock):
    proxy, _ = dictionary_proxy
    text = "Status of project falcon: Osprey ships from acme-internal.corp; falconry is unrelated."
    r = _post(proxy, json.dumps(user_request(text)).encode())
    assert r.status_code == 200, r.text
    sent = json.loads(mock.messages()[-1]["body"])["messages"][0]["content"]
    assert "falcon:" not in sent and "Osprey" not in sent and "acme-internal.corp" not in sent
    assert sent.count("[MASKED:dict-codenames:") == 3, sent
    assert "falconry is unrelated" in sent, "whole words only"
    # The same term, the same placeholder, in another request.
    again = _post(proxy, json.dumps(user_request("Osprey again")).encode())
    assert again.status_code == 200
    sent_again = json.loads(mock.messages()[-1]["body"])["messages"][0]["content"]
    osprey = [p for p in sent.split() if p.startswith("[MASKED:dict-codenames:")][1]
    assert sent_again.startswith(osprey.rstrip(";"))


def test_a_multi_word_term_split_across_deltas_is_masked_in_the_stream(dictionary_proxy, mock):
    proxy, _ = dictionary_proxy
    mock.script({"kind": "text", "text": "The plan for Project Falcon is ready.", "max_delta": 2})
    with make_client(proxy) as client:
        with client.messages.stream(**user_request("status?")) as stream:
            streamed = "".join(stream.text_stream)
    assert "Falcon" not in streamed and "[MASKED:dict-codenames:" in streamed, streamed
    assert streamed.startswith("The plan for [MASKED:") and streamed.endswith(" is ready.")


def test_a_list_of_100000_terms_masks_its_terms_and_nothing_else(dictionary_proxy, mock):
    proxy, terms = dictionary_proxy
    rng = random.Random(7)
    chosen = rng.sample(terms, 20)
    plant(*chosen)
    text = "Accounts to review: " + ", ".join(chosen) + ". Unrelated: Wexbury is not a customer."
    assert "Wexbury" not in terms
    r = _post(proxy, json.dumps(user_request(text)).encode())
    assert r.status_code == 200, r.text
    sent = json.loads(mock.messages()[-1]["body"])["messages"][0]["content"]
    for term in chosen:
        assert term not in sent, term
    assert sent.count("[MASKED:dict-customers:") == 20, sent
    assert "Wexbury is not a customer" in sent
    # Case-sensitive: the lower-cased name is not the term.
    lower = chosen[0].lower()
    r = _post(proxy, json.dumps(user_request(f"lower: {lower}")).encode())
    assert lower in json.loads(mock.messages()[-1]["body"])["messages"][0]["content"]


def test_a_new_list_is_masked_from_the_first_request_while_its_databases_compile(
        mock, tmp_path):
    """A proxy whose 100,000-term list was never compiled (an empty Hyperscan cache) answers at
    once, masking the terms with automata, and masks the same way once the databases it
    compiles in the background are in use."""
    from test_reload import OwnProxy
    from smtest import wait_until

    terms = generated_terms(100_000, seed=31)
    customers = tmp_path / "customers.txt"
    customers.write_text("\n".join(terms) + "\n")
    proxy = OwnProxy(
        tmp_path, mock.url,
        f'[upstream]\nurl = "{{UPSTREAM}}"\n\n'
        f'[[dictionaries]]\nid = "accounts"\npath = "{customers}"\ncase_sensitive = true\n',
        "interim", env={"STREAMMASK_HS_CACHE_DIR": str(tmp_path / "hs-cache")})
    try:
        rng = random.Random(11)
        chosen = rng.sample(terms, 12)
        plant(*chosen)
        text = "Accounts: " + ", ".join(chosen) + ". Not one: Wexbury."
        body = json.dumps(user_request(text)).encode()

        def sent_for_text() -> str:
            r = _post(proxy, body)
            assert r.status_code == 200, r.text
            return json.loads(mock.messages()[-1]["body"])["messages"][0]["content"]

        before = sent_for_text()
        assert "interim automata" in proxy.log_text(), proxy.log_text()[-2000:]
        assert "compiled in the background are in use" not in proxy.log_text(), \
            "the list compiled before the first request: nothing interim was tested"
        for term in chosen:
            assert term not in before, term
        assert before.count("[MASKED:dict-accounts:") == 12, before
        assert "Not one: Wexbury." in before

        wait_until(lambda: "compiled in the background are in use" in proxy.log_text(),
                   timeout=300, interval=0.2, what="the background compile")
        assert sent_for_text() == before
        assert list((tmp_path / "hs-cache").iterdir()), "the compiled databases are cached"
    finally:
        proxy.proc.kill()
        proxy.proc.wait(timeout=30)


# --- protected code --------------------------------------------------------------------------------

PROTECTED_ROOT = REPO / "loadtest" / "mock" / "src"
PROTECTED_FILE = PROTECTED_ROOT / "sse.rs"


def excerpt(path, start: int, count: int) -> list[str]:
    return path.read_text().splitlines()[start:start + count]


def reindent(lines: list[str]) -> str:
    """Tabs for every four leading spaces, comments dropped: how a paste changes code."""
    out = []
    for line in lines:
        stripped = line.lstrip(" ")
        if stripped.startswith("//"):
            continue
        depth = (len(line) - len(stripped)) // 4
        out.append("\t" * depth + stripped)
    return "\n".join(out)


def dense_start(path, count: int) -> int:
    """A start line whose `count` lines are code (few blank and comment lines)."""
    lines = path.read_text().splitlines()
    for start in range(40, len(lines) - count):
        window = lines[start:start + count]
        if sum(1 for l in window if l.strip() and not l.strip().startswith("//")) >= count - 1:
            return start
    raise AssertionError("no dense window")


@pytest.fixture(scope="module")
def protected_proxy(proxy_factory, session_dir):
    audit = session_dir / "protected-audit" / "audit.jsonl"
    audit.parent.mkdir(exist_ok=True)
    config = (
        f'[[protected_code]]\nid = "mock"\npaths = ["{PROTECTED_ROOT}"]\naction = "block"\n\n'
        f'[audit]\nsink = "file"\npath = "{audit}"\n'
    )
    conftest.AUDIT_OUTPUTS.append(audit)
    return proxy_factory(config=config, name="protected"), audit


def _audit_record(audit, request_id: str) -> dict:
    """The request's audit record, once the proxy's audit writer has flushed it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            for line in audit.read_text().splitlines():
                if line.strip() and json.loads(line).get("request_id") == request_id:
                    return json.loads(line)
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def _ask_with_code(proxy, code: str) -> httpx.Response:
    prompt = "Why does this fail?\n\n```rust\n" + code + "\n```\n"
    return _post(proxy, json.dumps(user_request(prompt)).encode())


def test_a_reindented_15_line_excerpt_of_protected_code_is_refused(protected_proxy, mock):
    proxy, audit = protected_proxy
    start = dense_start(PROTECTED_FILE, 15)
    before = mock.stats()
    r = _ask_with_code(proxy, reindent(excerpt(PROTECTED_FILE, start, 15)))
    assert r.status_code == 403, r.text
    error = assert_anthropic_error(r.content, "permission_error")
    assert "protected-code-mock" in error["error"]["message"]
    assert "fn " not in error["error"]["message"], "the refusal quotes no code"
    assert mock.stats()["requests"] == before["requests"], "nothing reaches the upstream"
    # The audit trail names the file, never the code.
    request_id = r.headers["x-streammask-request-id"]
    record = _audit_record(audit, request_id)
    text = json.dumps(record)
    assert "sse.rs" in text and "protected-code-mock" in text
    code_line = next(l.strip() for l in excerpt(PROTECTED_FILE, start, 15) if len(l.strip()) > 20)
    assert code_line not in text


def test_three_lines_and_unrelated_code_pass(protected_proxy, mock):
    proxy, _ = protected_proxy
    start = dense_start(PROTECTED_FILE, 3)
    r = _ask_with_code(proxy, reindent(excerpt(PROTECTED_FILE, start, 3)))
    assert r.status_code == 200, r.text
    elsewhere = REPO / "src" / "engine" / "dictionary.rs"
    r = _ask_with_code(proxy, "\n".join(excerpt(elsewhere, dense_start(elsewhere, 40), 40)))
    assert r.status_code == 200, r.text
    prose = textwrap.dedent("""
        The mock server streams events; each event is written in pieces so that the proxy sees
        arbitrary boundaries. Please explain how the writer decides where to cut.
    """)
    assert _post(proxy, json.dumps(user_request(prose)).encode()).status_code == 200
