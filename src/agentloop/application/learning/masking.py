"""Mask personal data and secrets in training text with typed placeholders (<EMAIL>, <SECRET>, ...).

Masking runs before de-duplication, so two examples that differ only in a secret become one. It must never
change arithmetic, decimals, dates or times: a dataset that teaches `1234 * 5678 = <PHONE>` is worse than
none. So digit runs count as cards or phone numbers only in a telling shape (Luhn-valid card lengths, phone
groupings) and never when an arithmetic operator or `=` sits right next to them. IPv4 addresses are kept on
purpose: they are mostly legitimate content (documentation ranges, localhost, answers about networks), and a
masked address teaches nothing a placeholder could not.
"""

from __future__ import annotations

import re
from collections.abc import Callable

EMAIL = "<EMAIL>"
PHONE = "<PHONE>"
SECRET = "<SECRET>"  # noqa: S105 - a placeholder, not a password
CARD = "<CARD>"

# Masking can join text into a new match (rarely); a few passes reach a fixed point, so mask is idempotent.
MAX_PASSES = 4
OPERATORS = frozenset("+-*/×÷^%")
_WINDOW = 32

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9-]*[A-Za-z]"
    r"[A-Za-z0-9-]*(?![A-Za-z0-9-])"
)
_BEARER_VALUE = r"[A-Za-z0-9._~+/=-]"
_KNOWN_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"sk-[A-Za-z0-9_-]{16,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r")(?![A-Za-z0-9])"
)
_BEARER = re.compile(rf"(?i)\b(bearer\s+){_BEARER_VALUE}{{7,}}[A-Za-z0-9_~+/=-]")
_KEYWORD_SECRET = re.compile(
    r"(?i)\b((?:api|access|secret|private|client)?[_-]?(?:key|token|secret)s?"
    r"[\"']?\s*(?:(?:[:=]|\bis\b)\s*)?[\"']?)"
    r"(?=[A-Za-z0-9+/_=.-]*\d)[A-Za-z0-9+/_=.-]{15,}[A-Za-z0-9+/_=]"
)
_PASSWORD = re.compile(
    r"(?i)\b((?:password|passwd|passphrase|pwd)[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?)"
    r"[^\s\"',;<]*[^\s\"',;<.!?)]"
)
_CARD = re.compile(
    r"(?<![\d.,])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5}|\d{13,19})(?!\d|[.,]\d)"
)
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[.,])(?:"
    r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"
    r"|(?:1[ .-])?(?:\([2-9]\d{2}\)\s?\d{3}[ .-]|[2-9]\d{2}(?P<sep>[ .-])\d{3}(?P=sep))\d{4}"
    r"|0\d{2,4}[ -]\d{3,8}(?:[ -]\d{3,4})?"
    r")(?!\d|[.,]\d)"
)


def mask(text: str) -> str:
    """Replace emails, phone numbers, API keys and tokens, passwords and card numbers with placeholders."""
    for _ in range(MAX_PASSES):
        masked = _mask_once(text)
        if masked == text:
            break
        text = masked
    return text


def _mask_once(text: str) -> str:
    text = _EMAIL.sub(EMAIL, text)
    text = _KNOWN_TOKENS.sub(SECRET, text)
    text = _BEARER.sub(lambda m: m.group(1) + SECRET, text)
    text = _KEYWORD_SECRET.sub(lambda m: m.group(1) + SECRET, text)
    text = _PASSWORD.sub(lambda m: m.group(1) + SECRET, text)
    text = _CARD.sub(_unless_arithmetic(CARD, _is_card), text)
    return _PHONE.sub(_unless_arithmetic(PHONE, _is_phone), text)


def _unless_arithmetic(placeholder: str, accept: Callable[[str], bool]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if _next_to_arithmetic(match) or not accept(match.group(0)):
            return match.group(0)
        return placeholder

    return replace


def _next_to_arithmetic(match: re.Match[str]) -> bool:
    text = match.string
    before = text[max(0, match.start() - _WINDOW) : match.start()].rstrip()
    after = text[match.end() : match.end() + _WINDOW].lstrip()
    if match.group(0).startswith("+") and before[-1:].isdigit():
        return True
    return _operation(before[::-1], ")") or _operation(after, "(")


def _operation(side: str, opening: str) -> bool:
    """`side` (read away from the match) starts with `=`, or with an operator followed by an operand."""
    if side[:1] == "=":
        return True
    if side[:1] not in OPERATORS:
        return False
    operand = side[1:].lstrip()[:1]
    return operand.isdigit() or operand in (opening, "-", "=")


def _is_card(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]  # the pattern allows 13 to 19 of them
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _is_phone(candidate: str) -> bool:
    return 8 <= sum(c.isdigit() for c in candidate) <= 15


__all__ = ["CARD", "EMAIL", "PHONE", "SECRET", "mask"]
