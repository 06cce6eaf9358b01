"""What one request may send and how much work the server takes on: upload limits, the queue bound, time limits.

Uploads are read in memory and never written under a name the client chose; a request over a limit is refused
with an :class:`ApiError` before its images are decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream")  # what a file part may declare (or nothing)


@dataclass(frozen=True)
class ServeSettings:
    """How much one request may ask for, how requests are batched, and how much load the server accepts.

    max_files: images in one request. max_bytes: size of one image file. max_pixels: width x height of one image,
    checked from its header before decoding. max_batch / max_wait_ms: a forward pass takes up to max_batch images and
    waits at most max_wait_ms for them to arrive (max_batch=1: one request at a time). max_queue: images waiting for
    a forward pass; a request that would go beyond it is refused at once (503 with Retry-After). timeout_s: how long
    a request may wait and run before it is answered 504. drain_s: how long a shutdown may take to finish the
    requests already accepted.
    """

    max_files: int = 16
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 60.0
    drain_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_bytes", "max_pixels", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("max_wait_ms", "drain_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ServeSettings.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"ServeSettings.timeout_s must be > 0, got {self.timeout_s!r}")
        if self.max_queue < self.max_files:
            raise ValueError(
                f"ServeSettings.max_queue ({self.max_queue}) must be at least max_files ({self.max_files}): "
                "a request with max_files images would never fit in the queue"
            )

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: every file at its limit, plus room for the multipart headers."""
        return self.max_files * (self.max_bytes + 4096) + 65536


class ApiError(Exception):
    """A request the server refuses: answered with ``status``, {"error": message} and ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _limited(receive: Receive, limit: int) -> Receive:
    """Wrap an ASGI ``receive`` so that a body longer than ``limit`` bytes stops being read (also when chunked)."""
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise ApiError(413, f"the request body is larger than the limit of {limit} bytes")
        return message

    return wrapped


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file part of a multipart request, in order, after checking every limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        got = content_type or "no content type"
        raise ApiError(415, f"expected a multipart/form-data upload with images in fields named 'files', got {got!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise ApiError(
            413, f"the request body ({declared} bytes) is larger than the limit of {settings.max_request_bytes} bytes"
        )
    limited = Request(request.scope, _limited(request.receive, settings.max_request_bytes))
    try:
        form = await limited.form(max_files=settings.max_files, max_fields=settings.max_files)
    except HTTPException as err:  # starlette's multipart errors: too many files or fields, a malformed body
        raise ApiError(413 if "Too many" in str(err.detail) else 400, f"cannot read the upload: {err.detail}") from None
    uploads = []
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise ApiError(400, "the upload holds no file; send one or more images in multipart fields named 'files'")
        for number, upload in enumerate(files, 1):
            name = upload.filename or f"file {number}"
            declared_type = upload.content_type or ""
            if declared_type and not declared_type.startswith(ACCEPTED_CONTENT_TYPES):
                raise ApiError(
                    415, f"{name} was sent as {declared_type!r}; expected an image (image/png, image/jpeg, ...)"
                )
            if upload.size is not None and upload.size > settings.max_bytes:
                raise ApiError(413, f"{name} is {upload.size} bytes, more than the limit of {settings.max_bytes} bytes")
            uploads.append((name, await upload.read()))
    finally:
        await form.close()
    return uploads
