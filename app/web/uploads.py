"""Streaming multipart uploads: the file goes to disk as it arrives, with the size limits enforced
byte by byte, so no request body is ever held in memory or spooled whole before it is checked.

Every byte of the form counts: the file against `max_bytes`, the whole body (text fields, part
headers and boundaries included) against `max_bytes` plus a small allowance; the number of parts
and each text field have bounds of their own, and the parser bounds each part's headers (more is
malformed)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidUpload, PayloadTooLarge, UnsupportedMediaType

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096  # `alt` and any other small text field
FORM_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers, small fields
DEFAULT_MAX_PARTS = 10
MAX_PART_HEADERS = 8  # Content-Disposition, Content-Type and a few a client may add
MAX_PART_HEADER_LINE_BYTES = 4096


@dataclass
class ReceivedFile:
    path: Path
    size: int
    head: bytes  # the first bytes, to tell the type by content
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)
    text: bytearray = field(default_factory=bytearray)


def form_limit(max_bytes: int) -> int:
    """The largest whole multipart body accepted for a file of at most `max_bytes`. A route that
    calls `receive_file` documents its body as multipart/form-data (`openapi_extra`): that is how
    the body-limit middleware knows to allow it this much instead of `MAX_BODY_BYTES`."""
    return max_bytes + FORM_OVERHEAD_BYTES


async def receive_file(
    request: Request, directory: Path, max_bytes: int, *, max_parts: int = DEFAULT_MAX_PARTS
) -> ReceivedFile:
    """Stream the `file` part of a multipart/form-data body into `directory`.

    413 as soon as the file exceeds `max_bytes`, the whole body `form_limit(max_bytes)` or a
    text field `MAX_FIELD_BYTES`, or the form has more than `max_parts` parts (with or without a
    Content-Length, chunked bodies included); 415 if the body is not multipart; 422 if it is
    malformed or has no `file` part.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("Send the image as multipart/form-data with a `file` field.")
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"The upload is larger than {max_bytes} bytes.")
    if declared and declared.isdigit() and int(declared) > form_limit(max_bytes):
        raise too_large

    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    path = directory / f"{secrets.token_hex(16)}.upload"
    state = _Part()
    fields: dict[str, str] = {}
    pending: list[bytes] = []
    written = 0
    parts = 0
    head = bytearray()
    seen_file = False

    def on_part_begin() -> None:
        nonlocal state, parts
        parts += 1
        if parts > max_parts:
            raise PayloadTooLarge(f"The form has more than {max_parts} parts.")
        state = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_field.decode("latin-1").lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        nonlocal seen_file
        _, disposition = parse_options_header(state.headers.get("content-disposition", b""))
        state.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state.is_file = state.name == FILE_FIELD and not seen_file
        seen_file = seen_file or state.is_file

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal written
        chunk = data[start:end]
        if state.is_file:
            written += len(chunk)
            if written > max_bytes:
                raise too_large
            if len(head) < 64:
                head.extend(chunk[: 64 - len(head)])
            pending.append(chunk)
        else:
            if len(state.text) + len(chunk) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(
                    f"The field `{state.name}` is larger than {MAX_FIELD_BYTES} bytes."
                )
            state.text += chunk

    def on_part_end() -> None:
        if not state.is_file and state.name:
            fields[state.name] = state.text.decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_LINE_BYTES,
    )
    received = 0
    try:
        async with await anyio.open_file(path, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > form_limit(max_bytes):
                    raise too_large
                parser.write(chunk)
                if pending:
                    await out.write(b"".join(pending))
                    pending.clear()
            parser.finalize()
    except MultipartParseError as exc:
        path.unlink(missing_ok=True)
        raise InvalidUpload("The multipart body is malformed.") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if not seen_file:
        path.unlink(missing_ok=True)
        raise InvalidUpload("The form has no `file` field.")
    return ReceivedFile(path, written, bytes(head), fields)
