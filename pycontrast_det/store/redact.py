"""Credentials out of URLs before they are shown or written: ``user:pass@`` and token-like query values."""
from __future__ import annotations

import re

#: Query parameter names whose values are secrets.
SECRET_NAMES = ("token", "access_token", "auth", "authorization", "key", "api_key", "apikey", "password", "pass",
                "secret", "sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
                "credential", "session")
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s?#@]+@")
_QUERY_RE = re.compile(r"([?&;])([^=&#\s]+)=([^&#\s]*)")
_TOKEN_VALUE_RE = re.compile(r"^(hf_|ghp_|gho_|github_pat_|glpat-|sk-|xox)|^[A-Za-z0-9_\-]{32,}$")
MASK = "***"


def _query(match: "re.Match[str]") -> str:
    sep, name, value = match.groups()
    secret = name.lower() in SECRET_NAMES or _TOKEN_VALUE_RE.search(value) is not None
    return f"{sep}{name}={MASK}" if secret and value else match.group(0)


def redact(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) with ``user:pass@`` and token-like query values masked."""
    return _QUERY_RE.sub(_query, _USERINFO_RE.sub(rf"\g<1>{MASK}@", text))
