"""Bearer tokens with scopes for the HTTP API.

Tokens come from ``LOGLAMBDA_TOKENS`` (``"tok1:write,tok2:read,tok3:read+write"``) and/or
a tokens file (``LOGLAMBDA_TOKENS_FILE``: the same entries, one per line, ``#``
comments). Scopes: ``write`` may post to ``/v1/ingest``; ``read`` is for the query API
and dashboard to come. A token has exactly the scopes listed (write does not imply read:
a shipper's token should not be able to read the data back).

No token configured means no authentication. That is only safe on a loopback address,
so ``loglambda serve`` refuses to bind anything else without tokens unless given
``--insecure`` (see ``serving/cli.py``).

Only SHA-256 digests of the tokens are kept, and a presented token is compared with
every known digest by ``hmac.compare_digest`` without stopping at a match, so the
time taken says nothing about which token, or which prefix, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from fastapi import HTTPException, Request

Scope = Literal["read", "write"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "write")
# RFC 6750's b64token: what a Bearer header can carry without quoting.
_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
REALM: Final = 'Bearer realm="loglambda"'


@dataclass(frozen=True)
class Token:
    """One configured token: its digest and what it may do."""

    digest: bytes
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class TokenStore:
    """The configured tokens; empty means authentication is off."""

    tokens: tuple[Token, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    @staticmethod
    def parse(text: str, origin: str = "LOGLAMBDA_TOKENS") -> TokenStore:
        """Entries ``token:scope[+scope]`` separated by commas or newlines."""
        entries = []
        for n, raw_line in enumerate(text.splitlines(), 1):
            # '#' cannot occur in a token, so everything after it is a comment.
            for entry in raw_line.split("#", 1)[0].split(","):
                entry = entry.strip()
                if entry:
                    entries.append(_entry(entry, f"{origin} line {n}"))
        return TokenStore(tuple(entries))

    @staticmethod
    def load(tokens: str | None = None, tokens_file: Path | None = None) -> TokenStore:
        """The tokens of ``LOGLAMBDA_TOKENS`` (passed in) and of the tokens file."""
        found: list[Token] = []
        if tokens:
            found.extend(TokenStore.parse(tokens).tokens)
        if tokens_file is not None:
            text = Path(tokens_file).read_text(encoding="utf-8")
            found.extend(TokenStore.parse(text, str(tokens_file)).tokens)
        return TokenStore(tuple(found))

    def scopes_of(self, presented: str) -> frozenset[Scope] | None:
        """The scopes of a presented token, or None if it is not one of ours."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: frozenset[Scope] | None = None
        for token in self.tokens:  # no early exit: constant time in the match position
            if hmac.compare_digest(digest, token.digest):
                found = token.scopes
        return found


def _entry(entry: str, where: str) -> Token:
    secret, sep, scopes_text = entry.rpartition(":")
    if not sep or not secret:
        raise ValueError(f"{where}: expected 'token:scope', e.g. 'abc123:write'")
    if not _TOKEN_RE.match(secret):
        raise ValueError(f"{where}: a token may hold only letters, digits and -._~+/=")
    scopes = frozenset(s.strip() for s in scopes_text.split("+"))
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(
            f"{where}: unknown scope {', '.join(sorted(unknown)) or repr('')}; "
            f"scopes are {', '.join(SCOPES)}, joined with '+'"
        )
    digest = hashlib.sha256(secret.encode()).digest()
    return Token(digest, frozenset(s for s in SCOPES if s in scopes))


def check(store: TokenStore, authorization: str | None, scope: Scope) -> None:
    """Raise the 401/403 ``HTTPException`` for a request lacking ``scope``.

    401 with ``WWW-Authenticate: Bearer`` when no token, or an unknown one, is given
    (RFC 6750 §3); 403 when the token is known but lacks the scope.
    """
    if not store.enabled:
        return
    kind, _, presented = (authorization or "").partition(" ")
    if kind.lower() != "bearer" or not presented.strip():
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": REALM})
    scopes = store.scopes_of(presented.strip())
    if scopes is None:
        raise HTTPException(
            401,
            "invalid token",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    if scope not in scopes:
        raise HTTPException(
            403,
            f"token lacks the {scope!r} scope",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
        )


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency admitting requests whose token has ``scope``; the store is
    ``app.state.tokens`` (set by ``create_app``)."""

    async def dependency(request: Request) -> None:
        check(request.app.state.tokens, request.headers.get("authorization"), scope)

    return dependency


def describe(store: TokenStore) -> str:
    """One line for the startup banner (never the tokens themselves)."""
    if not store.enabled:
        return "auth off (no tokens)"
    counts = {s: sum(s in t.scopes for t in store.tokens) for s in SCOPES}
    return f"{len(store.tokens)} token(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())


def loopback_only(addresses: Iterable[str]) -> bool:
    """Whether every address a host resolves to is a loopback address."""
    import ipaddress

    addrs = list(addresses)
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)
