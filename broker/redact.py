"""Remove secrets from anything the broker writes down.

The job store, the run folder and log lines carry specs, provider handles and error
details. Any of them may hold a credential that a user or an SDK put there: an access
key in ``provider_options``, a signed URL in a provider's job handle, a connection
string in an error message. :func:`redact` returns a copy with those values masked, so
that what is written can be shared without leaking them.

Two rules apply:

* a mapping value is masked whole when its key names a secret (``api_key``,
  ``client_secret``, ``sas_token``, ``Password``, ``connectionString`` ...);
* every string, wherever it sits, has known secret shapes masked inside it: AWS access
  key ids, bearer tokens, signature parameters of signed URLs and SAS tokens, key
  fields of connection strings, passwords in URLs, private key blocks and JWTs.

Example:
    >>> redact({"api_key": "abc123", "region": "us-east1"})
    {'api_key': '[REDACTED]', 'region': 'us-east1'}
    >>> redact("Authorization: Bearer abc.def")
    'Authorization: Bearer [REDACTED]'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "is_secret_key", "redact", "redact_text"]

MASK = "[REDACTED]"

# Words that make a key name a secret wherever they appear in it.
_SECRET_WORDS = frozenset(
    {
        "secret",
        "secrets",
        "token",
        "tokens",
        "password",
        "passwords",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "creds",
        "signature",
        "sig",
        "sas",
        "auth",
        "authorization",
        "cookie",
        "cookies",
        "connstr",
        "dsn",
        "pat",  # personal access token
        "pass",
        "passcode",
        "pin",
        "otp",
        "cert",
        "jwt",
    }
)
# Parts that name a secret even inside a run-together word (``apitoken``, ``sppass``).
_SECRET_PARTS = ("secret", "token", "passw", "passwd", "credential", "apikey")
# Key names that contain "key" but hold no secret: the broker needs them readable.
_SAFE_KEY_NAMES = frozenset({"idempotency_key", "idempotencykey"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")

# (pattern, replacement) pairs applied to every string, in order.
_TEXT_RULES: list[tuple[re.Pattern[str], str]] = [
    # PEM private key blocks.
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
            re.DOTALL,
        ),
        MASK,
    ),
    # AWS access key ids (long-lived AKIA..., temporary ASIA...).
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    # Google API keys.
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), MASK),
    # Tokens with a well-known prefix: GitHub (ghp_, gho_, ghs_, ghu_, github_pat_),
    # Hugging Face (hf_), Slack (xoxb-, xoxp-), OpenAI-style (sk-), GitLab (glpat-).
    (
        re.compile(
            r"\b(?:gh[opsu]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|hf_[A-Za-z0-9]{16,}|xox[abposr]-[A-Za-z0-9\-]{10,}"
            r"|sk-[A-Za-z0-9_\-]{20,}|glpat-[A-Za-z0-9_\-]{16,})"
        ),
        MASK,
    ),
    # JSON web tokens: three base64url parts, the first two starting with '{"'.
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"), MASK),
    # Authorization header values.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), rf"\1 {MASK}"),
    # Passwords inside URLs: scheme://user:password@host
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]+:)[^@\s/]+@"), rf"\1{MASK}@"),
    # Query parameters of signed URLs and SAS tokens (S3, GCS, Azure), and tokens or
    # keys passed in a query string.
    (
        re.compile(
            r"(?i)((?:^|[?&;])(?:x-amz-signature|x-amz-credential|x-amz-security-token"
            r"|x-goog-signature|x-goog-credential|signature|sig|googleaccessid"
            r"|token|access_token|id_token|refresh_token|api_key|apikey|key|code"
            r"|password|client_secret)=)[^&#\s'\"]+"
        ),
        rf"\1{MASK}",
    ),
    # Key fields of connection strings (Azure storage, Service Bus, databases).
    (
        re.compile(
            r"(?i)\b((?:account|shared|sharedaccess|access|secret|primary|secondary)"
            r"key|sharedaccesssignature|password|pwd)=([^;&\s'\"]+)"
        ),
        rf"\1={MASK}",
    ),
    # key: value or key=value pairs in free text, such as an SDK's error message.
    (
        re.compile(
            r"(?i)\b((?:aws_)?(?:secret_access_key|session_token|secret|password"
            r"|api[_-]?key|access[_-]?token|client[_-]?secret))(\s*[=:]\s*['\"]?)"
            r"(?!\[REDACTED\])([^\s'\";,&]+)"
        ),
        rf"\1\2{MASK}",
    ),
]


def is_secret_key(name: str) -> bool:
    """Tell whether a mapping key names a secret.

    A name is split into words (``clientSecret`` -> ``client``, ``secret``;
    ``AWS-Access-Key-Id`` -> ``aws``, ``access``, ``key``, ``id``). It names a secret
    when a word is a secret word (secret, token, password, credential, signature, sas,
    auth, ...) or when a word ends in ``key`` (``key``, ``apikey``, ``accountkey``),
    except for names the broker itself keeps readable (``idempotency_key``).

    Args:
        name: The key.

    Returns:
        True when the value under this key must be masked.
    """
    words = [w for w in _NON_WORD.split(_CAMEL.sub("_", name).lower()) if w]
    if "_".join(words) in _SAFE_KEY_NAMES:
        return False

    joined = "".join(words)
    if "connectionstring" in joined or "privatekey" in joined:
        return True
    if any(part in joined for part in _SECRET_PARTS):
        return True
    return any(w in _SECRET_WORDS or w.endswith("key") for w in words)


def redact_text(text: str) -> str:
    """Mask the secret shapes found inside one string.

    Args:
        text: Any text: a URL, a connection string, an error message.

    Returns:
        The text with each secret replaced by ``[REDACTED]``.
    """
    for pattern, replacement in _TEXT_RULES:
        text = pattern.sub(replacement, text)
    return text


def redact(obj: Any) -> Any:
    """Return a copy of `obj` with secrets masked.

    Mappings, lists and tuples are copied recursively; strings are scrubbed with
    :func:`redact_text`; a value under a key that names a secret (see
    :func:`is_secret_key`) becomes ``"[REDACTED]"`` unless it is empty, ``None``, a
    boolean or a number. Other values are returned as they are.

    Args:
        obj: A JSON-like value.

    Returns:
        The same shape, with secrets masked. The input is not changed.
    """
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        return {key: _redact_item(key, value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [redact(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(redact(item) for item in obj)
    return obj


def _redact_item(key: Any, value: Any) -> Any:
    if not (isinstance(key, str) and is_secret_key(key)):
        return redact(value)

    keeps_no_secret = value is None or isinstance(value, (bool, int, float))
    if keeps_no_secret or value in ("", [], {}):
        return value
    return MASK
