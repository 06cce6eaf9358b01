"""API keys: with a key file, every endpoint but the probes asks for ``Authorization: Bearer KEY``.

Keys are compared through their SHA-256 digests with :func:`hmac.compare_digest`, against every key in the file,
so neither the time an answer takes nor where a wrong key differs tells a caller anything about the keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = ("/livez", "/readyz")  # the probes of a load balancer or Kubernetes, which send no key


def read_api_keys(path: str | os.PathLike) -> list[bytes]:
    """The keys of a key file: one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"API key file not found: {path} (expected a text file with one key per line)"
        ) from None
    keys = [line.strip().encode("utf-8") for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError(
            f"{path} holds no API key (expected one key per line, got {len(lines)} blank or comment lines)"
        )
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeyMiddleware:
    """ASGI middleware answering 401 {"error": ...} to any request without a valid bearer key (probes excepted)."""

    def __init__(self, app: ASGIApp, keys: Sequence[bytes], open_paths: Collection[str] = OPEN_PATHS) -> None:
        if not keys:
            raise ValueError("ApiKeyMiddleware needs at least one key, got none")
        self.app = app
        self.digests = [_digest(key) for key in keys]
        self.open_paths = frozenset(open_paths)

    def accepts(self, authorization: bytes) -> bool:
        """Whether an Authorization header value is 'Bearer KEY' with one of the keys; every key is compared."""
        scheme, _, given = authorization.partition(b" ")
        digest = _digest(given.strip())
        matches = [hmac.compare_digest(digest, known) for known in self.digests]  # no early exit: same time for all
        return scheme.lower() == b"bearer" and any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization", b"")
        if self.accepts(authorization):
            await self.app(scope, receive, send)
            return
        reason = "a wrong API key" if authorization else "no API key"
        message = f"{reason}: send the header 'Authorization: Bearer KEY' with a key of this server"
        response = JSONResponse(
            {"error": message}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="vitkit"'}
        )
        await response(scope, receive, send)
