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

:func:`describe_yaml_error` reports a YAML parse error without the source line that
PyYAML quotes, since that line may hold a password.

Example:
    >>> redact({"api_key": "abc123", "region": "us-east1"})
    {'api_key': '[REDACTED]', 'region': 'us-east1'}
    >>> redact("Authorization: Bearer abc.def")
    'Authorization: Bearer [REDACTED]'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "describe_yaml_error", "is_secret_key", "redact", "redact_text"]

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
        "bearer",
        "cookie",
        "cookies",
        "session",
        "sessions",
        "connstr",
        "dsn",
        "pat",  # personal access token
        "pass",
        "passcode",
        "pin",
        "otp",
        "cert",
        "certs",
        "certificate",
        "certificates",
        "keyfile",
        "keytab",
        "jwt",
    }
)
# Parts that name a secret even inside a run-together word (``apitoken``, ``sppass``).
_SECRET_PARTS = ("secret", "token", "passw", "passwd", "credential", "apikey")
# Two words that name a secret together: ``connection_string``, ``serviceAccount``;
# each also counts run together (``serviceaccountjson``).
_SECRET_PHRASES = frozenset(
    {"connectionstring", "connstr", "privatekey", "serviceaccount"}
)
# Words after a secret word that make the name describe the secret rather than hold
# it: ``key_column`` names a column, ``session_name`` a label, ``token_ttl_s`` a time.
_DESCRIBING_WORDS = frozenset(
    {
        "alias",
        "algorithm",
        "arn",
        "bits",
        "col",
        "cols",
        "column",
        "columns",
        "count",
        "duration",
        "email",
        "env",
        "expiry",
        "expiration",
        "field",
        "fields",
        "format",
        "kind",
        "len",
        "length",
        "mode",
        "name",
        "names",
        "order",
        "prefix",
        "ring",
        "s",
        "seconds",
        "size",
        "suffix",
        "timeout",
        "ttl",
        "type",
        "types",
        "var",
        "vault",
        "version",
    }
)
# Words before ``key`` that make it a lookup key, not a secret: the broker's own
# ``idempotency_key``, a table's ``sort_key``, a cloud KMS key's id (an ARN or
# resource name that the job needs again on resume).
_LOOKUP_KEY_KINDS = frozenset(
    {"cache", "dedup", "hash", "idempotency", "join", "kms", "partition", "sort"}
)

# A quoted run in a parser's problem text may be the user's own text (an unknown tag);
# one or two characters and a token name such as '<scalar>' stay readable.
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_TOKEN_NAME = re.compile(r"<[a-z ]+>")

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")

# A field name that holds a secret, with any prefix of word parts (HF_TOKEN,
# AZURE_STORAGE_KEY): secrets, tokens, passwords and the compound "...key" names of
# keys that are secrets (a key_column or sort_key is not).
_SECRET_FIELD = (
    r"(?:[A-Za-z0-9_-]*[_-])?(?:secret_access_key|session_token|secret|password"
    r"|passwd|passphrase|credentials?|api[_-]?key|access[_-]?token|client[_-]?secret"
    r"|token|private[_-]?key|(?:secret|account|access|storage|subscription|shared"
    r"|master|signing|encryption)[_-]?key)"
)

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
    # Authorization header values. After "basic" the credentials are base64, with a
    # digit, a base64 sign or a capital after a small letter ("basic model families"
    # is no header).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), rf"\1 {MASK}"),
    (
        re.compile(
            r"\b([Bb][Aa][Ss][Ii][Cc])\s+"
            r"(?=[A-Za-z0-9\-._~+/]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9\-._~+/]{6,}=*"
        ),
        rf"\1 {MASK}",
    ),
    # Passwords inside URLs: scheme://user:password@host. A password may itself hold
    # '@' (or '/'), so it runs to the last '@' of the authority that a host follows,
    # else to the last such '@' before the next whitespace.
    (
        re.compile(
            r"(?<![a-zA-Z0-9+.\-])([a-zA-Z][a-zA-Z0-9+.\-]{0,30}://[^/\s:@]{1,256}:)"
            r"(?:[^\s/?#]{0,256}|\S{0,256})@"
            r"(?=[A-Za-z0-9\[])"
        ),
        rf"\1{MASK}@",
    ),
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
    # key: value or key=value pairs in free text, such as an SDK's error message, an
    # environment line (AZURE_CLIENT_SECRET=...) or JSON ("client_secret": "..."); the
    # key may carry a prefix (HF_TOKEN, GOOGLE_API_KEY, sas_token). A quoted value is
    # masked to its closing quote; after ':' a space or a quote must follow (a path
    # such as /data/secret:/mnt is no pair), and true, false, null and short whole
    # numbers (a count in "column 'token': 3 value(s)") are left as they are.
    (
        re.compile(
            rf"(?i)(?<![A-Za-z0-9_-])({_SECRET_FIELD})(['\"]?\s*(?:=|:(?=[\s'\"]))\s*)"
            r"(['\"])(?!\[REDACTED\])[^'\"\n]*\3"
        ),
        rf"\1\2\3{MASK}\3",
    ),
    (
        re.compile(
            rf"(?i)(?<![A-Za-z0-9_-])({_SECRET_FIELD})(['\"]?\s*(?:=|:(?=[\s'\"]))\s*)"
            r"(?!\[REDACTED\]|(?:true|false|null|none)\b|\d{1,4}\b(?![.,:]\d))"
            r"([^\s'\";,&]+)"
        ),
        rf"\1\2{MASK}",
    ),
]


def is_secret_key(name: str) -> bool:
    """Tell whether a mapping key names a secret.

    A name is split into words (``clientSecret`` -> ``client``, ``secret``;
    ``AWS-Access-Key-Id`` -> ``aws``, ``access``, ``key``, ``id``). A word names a
    secret when it is a secret word (secret, token, password, credential, signature,
    sas, auth, bearer, session, keyfile, ...), when it ends in ``key`` or ``keys``
    (``key``, ``apikey``, ``AccountKey``), when it holds a secret inside
    (``apitoken``), or when it ends a secret phrase (``connection_string``,
    ``private_key``, ``service_account``).

    The name is a secret when its last such word is not followed by a word that
    only describes the secret: ``key_column``, ``session_name``, ``token_ttl_s`` and
    ``service_account_email`` hold no secret, ``secret_key_id`` and
    ``service_account_json`` do. ``key`` after a lookup word (``idempotency_key``,
    ``sort_key``, ``kms_key_id``) is no secret either.

    Args:
        name: The key.

    Returns:
        True when the value under this key must be masked.

    Example:
        >>> is_secret_key("service_account_json"), is_secret_key("key_column")
        (True, False)
    """
    words = [w for w in _NON_WORD.split(_CAMEL.sub("_", name).lower()) if w]
    secret_at = [i for i in range(len(words)) if _names_secret(words, i)]
    if not secret_at:
        return False

    following = words[secret_at[-1] + 1 :]
    return not any(word in _DESCRIBING_WORDS for word in following)


def _names_secret(words: list[str], index: int) -> bool:
    word = words[index]
    before = words[index - 1] if index > 0 else ""
    if word.endswith(("key", "keys")):
        stem = word[: -3 if word.endswith("key") else -4]
        return before not in _LOOKUP_KEY_KINDS and stem not in _LOOKUP_KEY_KINDS
    if word in _SECRET_WORDS or before + word in _SECRET_PHRASES:
        return True
    return any(part in word for part in (*_SECRET_PARTS, *_SECRET_PHRASES))


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


def describe_yaml_error(error: Exception) -> str:
    """Say where and why a YAML text failed to parse, without quoting the text.

    PyYAML's own message copies the offending line with a caret under it; when that
    line holds a password the message would print it. This gives the 1-based line
    and column, the parser's problem and, when it has one, what it was reading and
    where that began. Quoted text the problem may echo (an unknown tag) is masked.

    Args:
        error: A ``yaml.YAMLError`` (any exception is accepted).

    Returns:
        One line such as ``line 3, column 1: found unexpected end of stream (while
        scanning a quoted scalar that began at line 2, column 19)``.

    Example:
        >>> import yaml
        >>> try:
        ...     yaml.safe_load('pwd: "hunter2')
        ... except yaml.YAMLError as exc:
        ...     print(describe_yaml_error(exc))  # doctest: +NORMALIZE_WHITESPACE
        line 1, column 14: found unexpected end of stream
        (while scanning a quoted scalar that began at line 1, column 6)
    """
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None or mark is None:
        first_line = next(iter(str(error).splitlines()), type(error).__name__)
        text = _mask_quoted(redact_text(first_line))
        position = getattr(error, "position", None)  # a reader error's character
        if isinstance(position, int):
            text += f" at character {position + 1}"
        return text

    text = f"{_position(mark)}: {_mask_quoted(redact_text(problem))}"
    context = getattr(error, "context", None)
    context_mark = getattr(error, "context_mark", None)
    if context and context_mark is not None:
        context = _mask_quoted(redact_text(context))
        text += f" ({context} that began at {_position(context_mark)})"
    elif context:
        text += f" ({_mask_quoted(redact_text(context))})"
    return text


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _mask_quoted(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        if len(inner) <= 2 or _TOKEN_NAME.fullmatch(inner):
            return match.group()
        return f"'{MASK}'"

    return _QUOTED.sub(mask, text)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secret shapes in each record's message.

    The broker's own log lines never hold a secret on purpose; this catches one that
    an SDK's error text carries into a message. Attach it to a handler (the CLI does)
    so that it sees every record, the libraries' too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format
            return True
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            masked_text = redact_text(text)
            if masked_text != text:  # the traceback carries a secret: show it masked
                record.msg, record.args = f"{masked}\n{masked_text}", None
                record.exc_info, record.exc_text = None, None
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True
