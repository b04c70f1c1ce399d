"""What the waste-bins functions share: reading a request or an event the
gateway already checked, and answering with JSON or an RFC 9457 problem.

Routed calls: the gateway has validated the path (the device id against
`^bin-[0-9]{1,6}$`), the query and the body against the manifest before
the function runs (T10), and set `bulkhead-subject` from the verified API
key (T11): a client cannot set it. Triggered calls: the host posts the
event to `/` with `bulkhead-event-*` headers no client can reach. Either
way, the functions bound what they read and never echo input into a
problem.
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

MAX_BODY = 16 * 1024

# Where the readings live: one app-wide store, keyed `DEVICE/READING`.
# The device part is the API key's verified subject (checked by the
# bridge), the reading part matched the body schema's pattern: neither
# holds a `/`, so one device's keys never collide with another's.
READINGS = "readings"


def header(request: IncomingRequest, name: str) -> str | None:
    values = request.headers().get(name)
    return values[0].decode("utf-8", "replace") if values else None


def api_key_subject(request: IncomingRequest) -> str | None:
    """The verified API key's subject (`bin-17`), or None for any other
    credential: only a device's own key may speak for it."""
    if header(request, "bulkhead-credential") != "api-key":
        return None
    return header(request, "bulkhead-subject")


def path_segments(request: IncomingRequest) -> list[str]:
    """The path's segments, percent-decoded: the gateway checked each
    parameter's pattern on the decoded value."""
    path = (request.path_with_query() or "/").split("?", 1)[0]
    return [unquote(segment) for segment in path.split("/") if segment]


def read_body(body, limit: int) -> bytes:
    """An incoming body (a request's, an event's or an outbound
    response's), read to its end; ValueError past `limit` bytes."""
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
    """The request or event body as a JSON object; at most MAX_BODY bytes."""
    value = json.loads(read_body(request.consume(), MAX_BODY) or b"{}")
    if not isinstance(value, dict):
        raise ValueError("body is not an object")
    return value


def reading_key(device: str, reading: str) -> str:
    return f"{device}/{reading}"


def send(response_out: ResponseOutparam, status: int, body: bytes, content_type: str) -> None:
    headers = Fields.from_list([("content-type", content_type.encode())])
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
                "type": f"https://bulkhead.dev/examples/waste-bins/{kind}",
                "title": title,
                "status": status,
                "correlation_id": header(request, "bulkhead-correlation-id"),
            }
        ).encode(),
        "application/problem+json",
    )
