"""Masking: secrets and personal data go, arithmetic, dates and times stay; idempotent; never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentloop.application.learning.masking import CARD, EMAIL, PHONE, SECRET, mask

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
B64URL = ALNUM + "-_"

KEEP = [
    "1234 * 5678 = 7006652",
    "3.14",
    "pi is about 3.14159265358979",
    "2025-06-02",
    "The meeting is on 2025-06-02 at 14:30.",
    "10:30:45",
    "2025-06-02T10:30:00Z",
    "7,006,652",
    "4111111111111111 * 2 = 8222222222222222",
    "12 + 4915112345678 = 4915112345690",
    "12 +4915112345678",
    "555-123-4567 = -4135",
    "the server 192.168.1.10 answers on port 8080",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "version 1.2.3 of the model",
    "There are 86400 seconds in a day and 31536000 in a year.",
    "<EMAIL> and <PHONE> stay placeholders",
    "",
]

MASKED = [
    ("mail john.doe+x@example.co.uk today", f"mail {EMAIL} today"),
    ("Call +1 (555) 123-4567 now", f"Call {PHONE} now"),
    ("Call 555-123-4567 now", f"Call {PHONE} now"),
    ("Call (555) 123-4567.", f"Call {PHONE}."),
    ("ring 1-800-555-1234", f"ring {PHONE}"),
    ("UK +44 20 7946 0958", f"UK {PHONE}"),
    ("London 020 7946 0958", f"London {PHONE}"),
    ("Berlin +4930123456789", f"Berlin {PHONE}"),
    ("Phone: 555.123.4567 - ask for Bob", f"Phone: {PHONE} - ask for Bob"),
    ("key sk-proj-abcdefghijklmnop1234", f"key {SECRET}"),
    ("AKIAIOSFODNN7EXAMPLE", SECRET),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", SECRET),
    ("github_pat_11ABCDEFG0123456789_abcdefghijkl", SECRET),
    ("slack xoxb-1234567890-abcdefghij", f"slack {SECRET}"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc-def_ghi", f"jwt {SECRET}"),
    ("Authorization: Bearer abc.def-ghi_12345", f"Authorization: Bearer {SECRET}"),
    ('api_key = "a1b2c3d4e5f6a7b8c9d0"', f'api_key = "{SECRET}"'),
    ('{"token": "abcdef0123456789abcdef"}', f'{{"token": "{SECRET}"}}'),
    ("client secret is 3q2+7w==aGVsbG8gd29ybGQ1", f"client secret is {SECRET}"),
    ("password: hunter2.", f"password: {SECRET}."),
    ("my card 4111 1111 1111 1111, thanks", f"my card {CARD}, thanks"),
    ("my card 4111-1111-1111-1111", f"my card {CARD}"),
    ("amex 3782 822463 10005", f"amex {CARD}"),
    ("pay with 5555555555554444 please", f"pay with {CARD} please"),
]


@pytest.mark.parametrize("text", KEEP)
def test_keeps_arithmetic_dates_times_and_hashes(text: str) -> None:
    assert mask(text) == text


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_masks_personal_data_and_secrets(text: str, expected: str) -> None:
    assert mask(text) == expected


def test_a_card_number_must_pass_luhn() -> None:
    assert mask("order 4111111111111112 shipped") == "order 4111111111111112 shipped"


def test_phone_digit_count_is_bounded() -> None:
    assert mask("id +1234567890123456789 x") == "id +1234567890123456789 x"


@st.composite
def numbers(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return str(draw(st.integers(min_value=0, max_value=10**20)))
    whole = draw(st.integers(min_value=0, max_value=10**9))
    frac = draw(st.integers(min_value=0, max_value=10**6))
    return f"{whole}.{frac}"


@st.composite
def equations(draw: st.DrawFn) -> str:
    """`a op b [op c ...] = r`, spaced or compact; the `=` marks it as arithmetic."""
    terms = draw(st.lists(numbers(), min_size=2, max_size=5))
    ops = draw(st.lists(st.sampled_from("+-*/"), min_size=len(terms) - 1, max_size=len(terms) - 1))
    spaced = draw(st.booleans())
    text = terms[0]
    for op, term in zip(ops, terms[1:], strict=True):
        text += f" {op} {term}" if spaced else f"{op}{term}"
    return f"{text} = {draw(numbers())}"


@st.composite
def spaced_expressions(draw: st.DrawFn) -> str:
    terms = draw(st.lists(numbers(), min_size=2, max_size=5))
    ops = draw(
        st.lists(
            st.sampled_from(["+", "-", "*", "/", "×", "÷", "^", "%"]),
            min_size=len(terms) - 1,
            max_size=len(terms) - 1,
        )
    )
    return terms[0] + "".join(f" {op} {term}" for op, term in zip(ops, terms[1:], strict=True))


@given(equations())
@example("1234 * 5678 = 7006652")
@example("555-123-4567 = -4135")
@example("200.100-1000.0 = 0.0")
def test_equations_are_unchanged(text: str) -> None:
    assert mask(text) == text


@given(spaced_expressions())
def test_spaced_expressions_are_unchanged(text: str) -> None:
    assert mask(text) == text


@given(st.dates(), st.times())
def test_dates_and_times_are_unchanged(day: object, time: object) -> None:
    text = f"on {day} at {time}, i.e. {day}T{time}"
    assert mask(text) == text


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.emails(), st.text(max_size=20), st.text(max_size=20))
def test_generated_emails_are_removed(email: str, left: str, right: str) -> None:
    masked = mask(f"{left} {email} {right}")
    assert email not in masked
    assert EMAIL in masked


def _token(prefix: str, alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size + 20).map(lambda body: prefix + body)


SECRETS = st.one_of(
    _token("sk-", ALNUM + "-_", 20),
    _token("AKIA", UPPER_DIGITS, 16).map(lambda key: key[:20]),
    _token("ghp_", ALNUM, 36),
    _token("gho_", ALNUM, 36),
    _token("xoxb-", ALNUM + "-", 12),
    _token("xoxp-", ALNUM + "-", 12),
    st.tuples(
        st.text(B64URL, min_size=4, max_size=30),
        st.text(B64URL, min_size=4, max_size=30),
        st.text(B64URL, max_size=40),
    ).map(lambda p: f"eyJ{p[0]}.eyJ{p[1]}.{p[2]}"),
)


@given(SECRETS, st.sampled_from(["", "here: ", "use ", "(", "key "]), st.sampled_from(["", ".", " ok", ")"]))
def test_generated_keys_are_removed(secret: str, left: str, right: str) -> None:
    masked = mask(f"{left}{secret}{right}")
    assert secret not in masked
    assert SECRET in masked


@given(
    st.sampled_from(["token", "api_key", "secret", "access_token", "API-KEY"]),
    st.sampled_from([": ", "=", " = ", " is ", '": "']),
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=64).filter(
        lambda s: any(c.isdigit() for c in s)
    ),
)
def test_hex_secrets_after_keywords_are_removed(word: str, separator: str, value: str) -> None:
    masked = mask(f"{word}{separator}{value}")
    assert value not in masked
    assert masked.endswith(SECRET)


@settings(max_examples=300)
@given(st.text())
def test_never_raises_and_is_idempotent(text: str) -> None:
    once = mask(text)
    assert mask(once) == once


SHAPED = st.lists(
    st.one_of(
        st.sampled_from(
            [
                *"0123456789+-*/=()., @:_",
                "sk-",
                "AKIA",
                "eyJ",
                "Bearer ",
                "key ",
                "password: ",
                "<EMAIL>",
                "<PHONE>",
                "<SECRET>",
                "<CARD>",
                "4111",
                "555",
                "+44",
                "a.b",
                "xox",
            ]
        ),
        st.text(alphabet=ALNUM, max_size=8),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500)
@given(SHAPED)
def test_idempotent_on_text_shaped_like_secrets(text: str) -> None:
    once = mask(text)
    assert mask(once) == once
