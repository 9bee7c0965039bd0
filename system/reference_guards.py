"""The built-in reference guards: six small, honest HTTP guard services on loopback (the embedded default).

``aeyon serve`` starts these when the operator configured no guard URL, so a fresh install answers real
requests. They are modest, lexicon- and regex-based checks, not a substitute for the production guards.
Each answer also carries ``"service"`` and ``"request_id"`` (the ``X-Request-ID`` request header, or null).
Text comes from the payload's ``"text"`` string, else its ``"content"`` string; anything else is a 400.
``start``/``end`` are character offsets into that text. Lists hold at most 100 entries, earliest first;
``count`` is the number of matches found in all. Token counts use the rule of thumb of 4 characters a token.

=============  ======================  =====================================================================
service        route                   detects -> answer fields
=============  ======================  =====================================================================
tokenguard     POST /scan              credentials and secrets: AWS key ids and secret keys, GitHub, Slack,
                                       Google API and Stripe live keys, JWTs, PEM private-key headers,
                                       ``password = "..."``-style assignments, ``Authorization: Bearer``
                                       -> ``safe``, ``findings`` [{type, start, end, redacted}], ``count``,
                                       ``tokens``; ``redacted`` keeps the first and last 4 characters (values
                                       under 12 characters are fully masked)
trustguard     POST /v1/validate       unsupported certainty ("100% guaranteed"), claims like "studies show"
                                       with no source within 200 characters, urgency phrases, mostly-capital
                                       text, piled-up exclamation marks, more than 5 URLs
                                       -> ``trust_score`` 0..1, ``verdict`` trusted (>= 0.8) | review (>= 0.5)
                                       | untrusted, ``signals`` [{signal, detail, start, end}], ``url_count``
contextguard   POST /analyze           size of the text against the payload's ``max_tokens`` (default 4096)
                                       -> ``chars``, ``tokens``, ``sentences``, ``repetition_ratio`` (share
                                       of sentences repeating an earlier one), ``max_tokens``, ``fits``
biasguard      POST /analyze           generalizations about groups ("all women are", "men always"),
                                       othering ("those people"), loaded terms
                                       -> ``bias_score`` 0..1, ``findings`` [{category, phrase, start, end}],
                                       ``count``
healthguard    POST /analyze           dosage instructions, cure claims, diagnoses, advice to stop
                                       medication, self-harm phrases
                                       -> ``risk`` low | medium (dosage, diagnosis) | high (cure claim,
                                       stopping medication, self-harm), ``findings`` as biasguard, ``count``
securityguard  POST /validate          prompt injection, SQL injection, code and command injection, path
                                       traversal -> ``safe``, ``risk_score`` 0..1, ``threats`` [{category,
                                       pattern, match, start, end}], ``count``
=============  ======================  =====================================================================

Every guard also answers ``GET /health`` with ``{"status": "healthy", "service": ...}``. Errors are JSON
``{"error": {"code", "message"}}``: 400 bad_input, 404 not_found, 405 method_not_allowed, 411
length_required (chunked bodies), 413 payload_too_large (over 10 MiB), 500 internal_error.

Run standalone with ``python -m system.reference_guards [--host H] [--ephemeral]``: it prints one JSON line
mapping each service to its URL, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = [
    "ANALYZERS",
    "MAX_BODY_BYTES",
    "ROUTES",
    "SEED_PORTS",
    "SERVICE_TYPES",
    "BadInput",
    "ReferenceGuards",
    "analyze_biasguard",
    "analyze_contextguard",
    "analyze_healthguard",
    "analyze_securityguard",
    "analyze_tokenguard",
    "analyze_trustguard",
    "main",
]

SEED_PORTS: Final[Mapping[str, int]] = {
    "tokenguard": 8001,
    "trustguard": 8002,
    "contextguard": 8003,
    "biasguard": 8004,
    "healthguard": 8005,
    "securityguard": 8103,
}
SERVICE_TYPES: Final[tuple[str, ...]] = tuple(SEED_PORTS)
ROUTES: Final[Mapping[str, str]] = {
    "tokenguard": "/scan",
    "trustguard": "/v1/validate",
    "contextguard": "/analyze",
    "biasguard": "/analyze",
    "healthguard": "/analyze",
    "securityguard": "/validate",
}
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
MAX_LISTED: Final = 100
DEFAULT_MAX_TOKENS: Final = 4096


class BadInput(ValueError):
    """The payload cannot be analyzed; answered with 400 bad_input."""


# --------------------------------------------------------------------------------------------------------
# Analysis. Every pattern is linear-time: no nested quantifiers, and a pattern that opens with a repeated
# character class is anchored by a lookbehind or \b so it can only start where a run starts (otherwise an
# input like "eyJeyJeyJ..." would rescan the run from every position, quadratic on 10 MiB).


@dataclass(frozen=True)
class _Rule:
    category: str
    name: str
    regex: re.Pattern[str]
    group: int = 0  # the part of the match that is reported


def _phrase(pattern: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    """Compile a case-blind pattern in which a plain space stands for any run of whitespace."""
    return re.compile(pattern.replace(" ", r"\s+"), flags)


def _rules(table: Iterable[tuple[str, str, str]]) -> tuple[_Rule, ...]:
    return tuple(_Rule(category, name, _phrase(pattern)) for category, name, pattern in table)


@dataclass(frozen=True)
class _Hit:
    rule: _Rule
    start: int
    end: int
    text: str


def _scan(text: str, rules: Iterable[_Rule]) -> tuple[list[_Hit], int]:
    """Return the earliest non-overlapping hits (at most MAX_LISTED) and how many there are in all."""
    kept: list[_Hit] = []
    total = 0
    for rule in rules:
        for n, match in enumerate(rule.regex.finditer(text)):
            total += 1
            # The overall earliest MAX_LISTED are among each rule's earliest MAX_LISTED; counting on past
            # them avoids holding millions of match objects for an adversarial 10 MiB input.
            if n < MAX_LISTED:
                start, end = match.span(rule.group)
                kept.append(_Hit(rule, start, end, match.group(rule.group)))
    # Stable sort: on equal spans the rule listed first (the more specific one) wins.
    kept.sort(key=lambda hit: (hit.start, -hit.end))
    hits: list[_Hit] = []
    for hit in kept:
        if hits and hit.start < hits[-1].end:
            total -= 1
            continue
        hits.append(hit)
    return hits[:MAX_LISTED], total


def _combined(weights: Iterable[float]) -> float:
    """Combine independent evidence as 1 - prod(1 - w): stays within 0..1 and grows with every hit."""
    remaining = 1.0
    for weight in weights:
        remaining *= 1.0 - weight
    return round(1.0 - remaining, 3)


def _text_of(payload: Mapping[str, Any]) -> str:
    text = payload.get("text")
    if text is None:
        text = payload.get("content")
    if not isinstance(text, str):
        raise BadInput('payload needs a "text" (or "content") string')
    return text


def _approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _redact(secret: str) -> str:
    # Showing 8 characters of a short secret would give most of it away.
    if len(secret) < 12:
        return "*" * len(secret)
    return f"{secret[:4]}{'*' * min(len(secret) - 8, 32)}{secret[-4:]}"


def _findings(hits: Iterable[_Hit]) -> list[dict[str, Any]]:
    return [{"category": h.rule.category, "phrase": h.text, "start": h.start, "end": h.end} for h in hits]


_ASSIGN = r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
_TOKEN_RULES: Final = (
    _Rule("aws_access_key_id", "", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    _Rule("aws_secret_access_key", "", _phrase(
        r"(?:aws_?secret(?:_?access)?(?:_?key)?|secret_?access_?key)" + _ASSIGN
        + r"([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"), group=1),
    _Rule("github_token", "", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}")),
    _Rule("slack_token", "", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,250}")),
    _Rule("google_api_key", "", re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])")),
    _Rule("stripe_live_key", "", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{10,99}\b")),
    _Rule("jwt", "", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")),
    _Rule("private_key", "", re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")),
    _Rule("bearer_token", "", _phrase(
        r"\bauthorization" + _ASSIGN + r"bearer\s{1,3}([A-Za-z0-9._~+/-]{8,4096}=*)"), group=1),
    # Generic assignments go last so that a specific rule names a value both of them find.
    _Rule("secret_assignment", "", _phrase(
        r"\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
        + _ASSIGN + r"([^\s\"'`,;]{4,200})"), group=1),
)


def analyze_tokenguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Find credentials and secrets in the payload's text."""
    text = _text_of(payload)
    hits, total = _scan(text, _TOKEN_RULES)
    findings = [
        {"type": h.rule.category, "start": h.start, "end": h.end, "redacted": _redact(h.text)} for h in hits
    ]
    return {"safe": total == 0, "findings": findings, "count": total, "tokens": _approx_tokens(text)}


# The penalty each trust signal takes off the score, and each finding adds to a bias or security score.
_WEIGHTS: Final[Mapping[str, float]] = {
    "unsupported_certainty": 0.25,
    "unsourced_claim": 0.2,
    "urgency": 0.15,
    "excessive_caps": 0.2,
    "excessive_exclamation": 0.1,
    "link_heavy": 0.15,
    "generalization": 0.4,
    "othering": 0.3,
    "loaded_term": 0.2,
    "prompt_injection": 0.5,
    "sql_injection": 0.6,
    "code_injection": 0.5,
    "command_injection": 0.6,
    "path_traversal": 0.4,
}
_TRUST_RULES: Final = _rules([
    ("unsupported_certainty", "", r"\b(?:100\s?% (?:guaranteed|certain|sure|safe|effective|proven)"
     r"|guaranteed (?:results|to work|success)|absolutely (?:certain|guaranteed|proven)|scientifically proven"
     r"|risk[-\s]free|never fails|without a doubt)"),
    ("urgency", "", r"\b(?:act now|limited time|only \d{1,4} left|hurry|don'?t miss out|last chance"
     r"|expires (?:today|soon)|urgent(?:ly)?|immediately)\b"),
])
_CLAIM: Final = _phrase(
    r"\b(?:studies|research|experts|scientists|doctors) (?:show|prove|say|agree|confirm)s?\b"
)
_SOURCE: Final = _phrase(r"https?://|\bdoi:|\[\d{1,3}\]|\bet al\b|according to"
                         r"|\((?:[A-Z][A-Za-z-]{1,40},? )?(?:19|20)\d\d\)")
_URL: Final = _phrase(r"\bhttps?://[^\s<>\"']+")
_NOT_UPPER: Final = re.compile(r"[^A-Z]+")
_NOT_LETTER: Final = re.compile(r"[^A-Za-z]+")


def analyze_trustguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Score how far the payload's text can be trusted, from rhetorical warning signs."""
    text = _text_of(payload)
    hits, _ = _scan(text, _TRUST_RULES)
    signals: list[dict[str, Any]] = [
        {"signal": h.rule.category, "detail": h.text, "start": h.start, "end": h.end} for h in hits
    ]
    for n, claim in enumerate(_CLAIM.finditer(text)):
        if n < MAX_LISTED and not _SOURCE.search(text, max(0, claim.start() - 200), claim.end() + 200):
            signals.append({"signal": "unsourced_claim", "detail": claim.group(), "start": claim.start(),
                            "end": claim.end()})
    whole_text: list[tuple[str, str]] = []
    letters = len(_NOT_LETTER.sub("", text))
    capitals = len(_NOT_UPPER.sub("", text))
    if letters >= 20 and capitals / letters > 0.6:
        whole_text.append(("excessive_caps", f"{capitals / letters:.0%} of letters are capitals"))
    exclamations = text.count("!")
    if "!!" in text or (exclamations >= 3 and exclamations > len(text) / 200):
        whole_text.append(("excessive_exclamation", f"{exclamations} exclamation marks"))
    url_count = sum(1 for _ in _URL.finditer(text))
    if url_count > 5:
        whole_text.append(("link_heavy", f"{url_count} URLs"))
    signals.sort(key=lambda s: int(s["start"]))
    signals += [{"signal": name, "detail": detail, "start": None, "end": None} for name, detail in whole_text]
    score = round(1.0 - _combined(_WEIGHTS[s["signal"]] for s in signals), 3)
    verdict = "trusted" if score >= 0.8 else "review" if score >= 0.5 else "untrusted"
    return {"trust_score": score, "verdict": verdict, "signals": signals[:MAX_LISTED], "url_count": url_count}


# Anchored at the start of a punctuation run so that "!!!!...x" is not rescanned from every "!".
_SENTENCE_BREAK: Final = re.compile(r"(?<![.!?])[.!?]+(?:\s+|$)|\n+")


def analyze_contextguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Measure the payload's text and whether it fits a token budget."""
    text = _text_of(payload)
    max_tokens = payload.get("max_tokens", DEFAULT_MAX_TOKENS)
    # bool is an int subclass; true as a budget is a caller's mistake, not 1 token.
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadInput('"max_tokens" must be a positive integer')
    sentences = [" ".join(s.lower().split()) for s in _SENTENCE_BREAK.split(text)]
    sentences = [s for s in sentences if s]
    repeated = len(sentences) - len(set(sentences))
    tokens = _approx_tokens(text)
    return {
        "chars": len(text),
        "tokens": tokens,
        "sentences": len(sentences),
        "repetition_ratio": round(repeated / len(sentences), 3) if sentences else 0.0,
        "max_tokens": max_tokens,
        "fits": tokens <= max_tokens,
    }


_GROUPS: Final = (
    r"(?:women|men|girls|boys|immigrants|foreigners|refugees|muslims|christians|jews|hindus|buddhists|atheists"
    r"|catholics|americans|mexicans|chinese|indians|africans|europeans|russians|arabs|asians|blacks|whites"
    r"|gays|lesbians|old people|elderly people|the elderly|young people|teenagers|millennials|boomers)"
)
_BIAS_RULES: Final = _rules([
    ("generalization", "", r"\b(?:all|every) " + _GROUPS + r" (?:are|is|can'?t|cannot|never|always)\b"),
    ("generalization", "", r"\b" + _GROUPS + r" (?:are|is) (?:all|always|never|naturally|inherently"
     r"|genetically|just|too)\b"),
    ("generalization", "", r"\b" + _GROUPS + r" (?:always|never|can'?t|cannot)\b"),
    ("othering", "", r"\b(?:those|these|you) people\b"),
    ("loaded_term", "", r"\b(?:illegals|illegal aliens|savages|uncivilized|retarded|thugs|hysterical|bossy"
     r"|shrill)\b"),
])


def analyze_biasguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Find generalizations about groups, othering and loaded terms in the payload's text."""
    hits, total = _scan(_text_of(payload), _BIAS_RULES)
    score = _combined(_WEIGHTS[h.rule.category] for h in hits)
    return {"bias_score": score, "findings": _findings(hits), "count": total}


_DISEASES: Final = (
    r"(?:cancer|diabetes|depression|adhd|autism|bipolar disorder|schizophrenia|dementia|alzheimer'?s|hiv|aids"
    r"|covid(?:-19)?|pneumonia|a tumou?r|heart disease|arthritis|asthma|an infection|sepsis|lupus"
    r"|multiple sclerosis|parkinson'?s|[a-z]{2,30}(?:itis|osis|oma|emia))"
)
_DRUGS: Final = (
    r"(?:medications?|meds|medicines?|insulin|antidepressants?|pills|prescriptions?|chemo(?:therapy)?"
    r"|treatment)"
)
_DOSE: Final = r"\d{1,5}(?:[.,]\d{1,3})?\s?"
_HEALTH_RULES: Final = _rules([
    ("self_harm", "", r"\b(?:(?:kill|cut|cutting|hurt|hurting) (?:myself|yourself|themselves)|commit suicide"
     r"|suicid(?:e|al)|end (?:my|your|their) (?:own )?life|self[-\s]harm|overdose on|want to die"
     r"|better off dead)\b"),
    ("stop_medication", "", r"\b(?:stop|quit|discontinue|skip|ditch|throw away) (?:(?:taking|using) )?"
     r"(?:all )?(?:of )?(?:(?:your|the|my) )?" + _DRUGS + r"\b"),
    ("stop_medication", "", r"\b(?:don'?t|do not) need (?:(?:your|any) )?(?:" + _DRUGS + r"|a doctor)\b"),
    ("cure_claim", "", r"\b(?:cures?|cured|heals?|reverses?|eliminates?|eradicates?) (?:(?:your|all|the) )?"
     r"(?:" + _DISEASES + r"|any disease|all diseases)\b"),
    ("cure_claim", "", r"\bmiracle (?:cure|treatment|pill)\b"),
    ("diagnosis", "", r"\b(?:you (?:(?:definitely|probably|likely|clearly) )?(?:have|are suffering from)"
     r"|you'?ve got|i diagnose you with) (?:an? )?" + _DISEASES + r"\b"),
    ("dosage_instruction", "", r"\b(?:take|takes|taking|give|inject|administer|use) "
     r"(?:(?:up to|about|at least) )?" + _DOSE
     + r"(?:mg|mcg|µg|g|ml|iu|units?|tablets?|pills?|capsules?|drops?|puffs?)\b"),
    ("dosage_instruction", "", r"\b" + _DOSE + r"(?:mg|mcg|ml|iu) (?:once|twice|daily|every|per day|a day"
     r"|three times|four times)\b"),
])
_HIGH_RISK: Final = frozenset({"self_harm", "stop_medication", "cure_claim"})


def analyze_healthguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Rate the medical risk of the payload's text."""
    hits, total = _scan(_text_of(payload), _HEALTH_RULES)
    categories = {h.rule.category for h in hits}
    risk = "high" if categories & _HIGH_RISK else "medium" if categories else "low"
    return {"risk": risk, "findings": _findings(hits), "count": total}


_SECURITY_RULES: Final = (
    *_rules([
        ("prompt_injection", "ignore_instructions", r"\bignore (?:(?:all|any) )?(?:(?:the|your|my) )?"
         r"(?:(?:previous|prior|above|earlier|preceding|former) )?(?:instructions|prompts?|rules|directions"
         r"|guidelines)\b"),
        ("prompt_injection", "disregard_above", r"\bdisregard (?:(?:all|any) )?(?:(?:the|your|my) )?(?:above"
         r"|previous|prior|earlier|preceding|instructions|rules|guidelines)\b"),
        ("prompt_injection", "role_override", r"\byou are now (?:dan|no longer|(?:an? )?(?:unrestricted"
         r"|unfiltered|uncensored|jailbroken|evil|rogue)|in (?:developer|god|dan|jailbreak) mode"
         r"|free (?:from|of))\b"),
        ("prompt_injection", "reveal_system_prompt", r"\b(?:reveal|show|print|repeat|output|leak|display"
         r"|tell me) (?:me )?(?:your|the) (?:(?:system|initial|hidden|original|secret)"
         r" (?:prompt|instructions|message)|prompt)\b"),
        ("prompt_injection", "jailbreak", r"\bjailbr(?:eak|oken)[a-z]{0,10}|\bdo anything now\b"),
    ]),
    # Case-sensitive: "Dan" is a name, "DAN" the jailbreak persona.
    _Rule("prompt_injection", "dan", re.compile(r"\bDAN\b")),
    *_rules([
        ("sql_injection", "tautology", r"'\s{0,5}(?:or|and) (?:'?(\w{1,20})'?\s{0,3}=\s{0,3}'?\1'?|true\b)"),
        ("sql_injection", "union_select", r"\bunion (?:all )?select\b"),
        ("sql_injection", "stacked_query", r";\s{0,10}(?:drop (?:table|database)|delete from|truncate table"
         r"|insert into|shutdown)\b"),
        ("sql_injection", "quote_comment", r"'\s{0,5}(?:--|#|/\*)"),
        ("code_injection", "script_tag", r"<\s{0,3}(?:script|iframe)\b"),
        ("code_injection", "javascript_url", r"\bjavascript\s{0,3}:"),
        ("code_injection", "event_handler", r"\bon(?:error|load|click|mouseover|focus)\s{0,5}="),
        ("code_injection", "eval", r"\b(?:eval|exec|__import__)\s{0,5}\("),
        ("command_injection", "os_command", r"\bos\.(?:system|popen)\b"
         r"|\bsubprocess\.(?:call|run|popen|check_output|check_call)\b"),
        ("command_injection", "rm_rf", r"\brm -(?:rf|fr)\b"),
        ("command_injection", "command_substitution", r"\$\([^()\n]{1,200}\)"),
        ("command_injection", "backtick_command", r"`\s{0,3}(?:rm|curl|wget|nc|bash|sh|cat|chmod|whoami"
         r"|python3?|perl)\b[^`\n]{0,200}`"),
        ("command_injection", "pipe_to_shell", r"\|\s{0,5}(?:ba|z)?sh\b"),
        ("path_traversal", "dot_dot", r"(?:\.\.[/\\]|%2e%2e(?:%2f|%5c)){1,64}"),
        ("path_traversal", "sensitive_file", r"/etc/(?:passwd|shadow)\b"),
    ]),
)


def analyze_securityguard(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Find prompt, SQL, code and command injection and path traversal in the payload's text."""
    hits, total = _scan(_text_of(payload), _SECURITY_RULES)
    threats = [{"category": h.rule.category, "pattern": h.rule.name, "match": h.text[:200], "start": h.start,
                "end": h.end} for h in hits]
    score = _combined(_WEIGHTS[h.rule.category] for h in hits)
    return {"safe": total == 0, "risk_score": score, "threats": threats, "count": total}


ANALYZERS: Final[Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "tokenguard": analyze_tokenguard,
    "trustguard": analyze_trustguard,
    "contextguard": analyze_contextguard,
    "biasguard": analyze_biasguard,
    "healthguard": analyze_healthguard,
    "securityguard": analyze_securityguard,
}


# --------------------------------------------------------------------------------------------------------
# HTTP.


class _GuardServer(ThreadingHTTPServer):
    """One guard type's HTTP server; tracks live connections so close() can release them."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service_type: str) -> None:
        self.service_type = service_type
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, _GuardHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's getfqdn(), which can stall on a reverse DNS lookup."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    # Any: the typeshed request type is private; only stream sockets reach a TCP server.
    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, registered so close() can cut it short."""
        with self._lock:
            self._live[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._live.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away mid-answer; report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close(self, timeout: float) -> None:
        """Stop accepting, cut idle keep-alive connections and wait for their threads."""
        self.shutdown()
        self.server_close()
        with self._lock:
            live = list(self._live.items())
        for sock, _ in live:
            # shutdown, not close: it wakes a thread blocked reading the next keep-alive request.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _, thread in live:
            thread.join(timeout)


class _GuardHandler(BaseHTTPRequestHandler):
    """Routes a request to the server's guard type and answers in JSON."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for the client's
    # delayed ACK of the headers (~40 ms a call on Linux).
    disable_nagle_algorithm = True
    # An idle keep-alive client gives its thread back after this many seconds.
    timeout = 30
    server: _GuardServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the orchestrator logs requests; a guard per request would drown it."""

    def do_GET(self) -> None:
        """Answer GET."""
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol errors found by the base class in JSON like every other error."""
        reason = message or self.responses.get(code, ("error",))[0]
        self._send_json(code, _error("http_error", reason), close=True)

    def _dispatch(self) -> None:
        service = self.server.service_type
        path = urlsplit(self.path).path
        allowed = "GET" if path == "/health" else "POST" if path == ROUTES[service] else None
        # A body left unread would be parsed as the next request on this keep-alive connection.
        unread = self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers
        if allowed is None:
            self._send_json(404, _error("not_found", f"no route {path}"), close=unread)
        elif self.command != allowed and not (self.command == "HEAD" and allowed == "GET"):
            self._send_json(405, _error("method_not_allowed", f"{path} takes {allowed}"), close=unread,
                            extra={"Allow": allowed})
        elif allowed == "GET":
            self._send_json(200, {"status": "healthy"})
        else:
            self._analyze(service)

    def _analyze(self, service: str) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send_json(411, _error("length_required", "send a Content-Length body"), close=True)
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._send_json(400, _error("bad_input", "invalid Content-Length"), close=True)
            return
        if length > MAX_BODY_BYTES:
            self._send_json(413, _error("payload_too_large", f"body over {MAX_BODY_BYTES} bytes"), close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._send_json(400, _error("bad_input", f"body is not valid JSON: {exc}"))
            return
        if not isinstance(payload, dict):
            self._send_json(400, _error("bad_input", "body must be a JSON object"))
            return
        try:
            result = ANALYZERS[service](payload)
        except BadInput as exc:
            self._send_json(400, _error("bad_input", str(exc)))
        except Exception as exc:
            # Every request gets one answer, even when an analyzer has a bug.
            self._send_json(500, _error("internal_error", f"{type(exc).__name__}: {exc}"))
        else:
            self._send_json(200, result)

    def _send_json(self, status: int, body: Mapping[str, Any], *, close: bool = False,
                   extra: Mapping[str, str] | None = None) -> None:
        # headers is unset when the request line itself was malformed.
        headers = getattr(self, "headers", None)
        request_id = headers.get("X-Request-ID") if headers is not None else None
        data = json.dumps({"service": self.server.service_type, "request_id": request_id, **body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if request_id is not None:
            self.send_header("X-Request-ID", request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class ReferenceGuards:
    """The six reference guards, each serving on its own loopback port in background threads."""

    def __init__(self, servers: Mapping[str, _GuardServer], threads: list[threading.Thread],
                 fallbacks: Mapping[str, int]) -> None:
        self._servers = dict(servers)
        self._threads = threads
        self._stopped = False
        self.fallbacks: dict[str, int] = dict(fallbacks)
        self.urls: dict[str, str] = {}
        for service, server in self._servers.items():
            host = server.server_name
            shown = f"[{host}]" if ":" in host else host
            self.urls[service] = f"http://{shown}:{server.server_port}"

    @classmethod
    def start(cls, host: str = "127.0.0.1", ports: Mapping[str, int] | None = None) -> ReferenceGuards:
        """Start every guard on its seed port (or ``ports[type]``; 0 is ephemeral), falling back when busy."""
        wanted = dict(SEED_PORTS)
        unknown = set(ports or {}) - set(wanted)
        if unknown:
            raise ValueError(f"unknown guard types: {sorted(unknown)}")
        wanted.update(ports or {})
        servers: dict[str, _GuardServer] = {}
        fallbacks: dict[str, int] = {}
        try:
            for service, port in wanted.items():
                try:
                    servers[service] = _GuardServer((host, port), service)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or port == 0:
                        raise
                    # A busy seed port (an old run, another tool) must not stop the embedded default.
                    servers[service] = _GuardServer((host, 0), service)
                    fallbacks[service] = port
        except BaseException:
            for server in servers.values():
                server.server_close()
            raise
        threads = []
        for service, server in servers.items():
            thread = threading.Thread(target=server.serve_forever, name=f"reference-{service}", daemon=True)
            thread.start()
            threads.append(thread)
        return cls(servers, threads, fallbacks)

    def stop(self, timeout: float = 5.0) -> None:
        """Shut every server down, close its connections and join its threads; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        # In parallel: each shutdown() waits up to one serve_forever poll interval (0.5 s).
        closers = [threading.Thread(target=s.close, args=(timeout,)) for s in self._servers.values()]
        for closer in closers:
            closer.start()
        for thread in [*closers, *self._threads]:
            thread.join(timeout)

    def __enter__(self) -> ReferenceGuards:
        """Return the running guards."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the guards."""
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve the reference guards until SIGTERM or SIGINT; print their URLs as one JSON line first."""
    parser = argparse.ArgumentParser(prog="python -m system.reference_guards",
                                     description="Serve the built-in reference guards.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--ephemeral", action="store_true", help="use free ports instead of the seed ports")
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server threads start so they inherit the mask and sigwait() alone receives the
    # signal: no handler runs at an arbitrary point of the main thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        guards = ReferenceGuards.start(args.host, {s: 0 for s in SERVICE_TYPES} if args.ephemeral else None)
    except OSError as exc:
        print(f"reference guards: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1
    with guards:
        print(json.dumps(guards.urls), flush=True)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
