"""What the conference's Python functions share: reading the request the
gateway already checked, and answering with JSON or an RFC 9457 problem.

The gateway has validated the path, the query and the body against the
manifest before the function runs (T10), and set `bulkhead-subject` from
the verified credential (T11): a client cannot set it. The functions still
bound what they read and never echo input into a problem.
"""

import json
from urllib.parse import unquote

from componentize_py_types import Err, Ok
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

MAX_BODY = 64 * 1024


def header(request: IncomingRequest, name: str) -> str | None:
    values = request.headers().get(name)
    return values[0].decode("utf-8", "replace") if values else None


def subject(request: IncomingRequest) -> str:
    """The verified caller, qualified as Bulkhead qualifies it everywhere
    else (`session:ada`, `api-key:ci-bot`, `jwt:ISSUER:SUB`): the
    `bulkhead-subject` header is the name as the credential gives it, so a
    session, an API key and a JWT `sub` named `ada` would otherwise share
    rows (T13). The subject-scoped key-value store does this itself."""
    name = header(request, "bulkhead-subject") or ""
    kind = header(request, "bulkhead-credential") or ""
    if kind == "jwt":
        issuer = (header(request, "bulkhead-issuer") or "").replace("%", "%25").replace(":", "%3A")
        return f"jwt:{issuer}:{name}"
    return f"{kind}:{name}"


def path_segments(request: IncomingRequest) -> list[str]:
    """The path's segments, percent-decoded: the gateway checked each
    parameter's pattern on the decoded value (`/register/%61da` is `ada`),
    so the raw text is not what was validated (outside review)."""
    path = (request.path_with_query() or "/").split("?", 1)[0]
    return [unquote(segment) for segment in path.split("/") if segment]


def read_body(body, limit: int) -> bytes:
    """An incoming body (a request's or an outbound response's), read to
    its end; ValueError past `limit` bytes, so nothing unbounded is held."""
    data = bytearray()
    with body.stream() as stream:
        while len(data) <= limit:
            try:
                data += stream.blocking_read(16 * 1024)
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    break
                raise
    if len(data) > limit:
        raise ValueError("body too large")
    return bytes(data)


def read_json(request: IncomingRequest) -> dict:
    """The request body as a JSON object (the gateway checked it against
    the route's schema); at most MAX_BODY bytes are read."""
    value = json.loads(read_body(request.consume(), MAX_BODY) or b"{}")
    if not isinstance(value, dict):
        raise ValueError("body is not an object")
    return value


def send(
    response_out: ResponseOutparam,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[str, bytes]] | None = None,
) -> None:
    headers = Fields.from_list([("content-type", content_type.encode())] + (extra or []))
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    out = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with out.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out, None)


def send_json(response_out: ResponseOutparam, status: int, value) -> None:
    send(response_out, status, json.dumps(value, sort_keys=True).encode(), "application/json")


def problem(response_out: ResponseOutparam, request: IncomingRequest, status: int, kind: str, title: str) -> None:
    """An RFC 9457 problem with the gateway's correlation ID; never the input."""
    send(
        response_out,
        status,
        json.dumps(
            {
                "type": f"https://bulkhead.dev/examples/conference/{kind}",
                "title": title,
                "status": status,
                "correlation_id": header(request, "bulkhead-correlation-id"),
            }
        ).encode(),
        "application/problem+json",
    )
