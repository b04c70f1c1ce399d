"""The {{NAME}} function: a wasi:http/incoming-handler component.

It runs in a fresh sandbox for every call, with nothing granted: no files,
no network, no environment. The gateway has already checked the caller's
credential and the request's input (bulkhead.toml) before this code runs,
and tells it who called in the `bulkhead-subject` header.
Build it with `bulkhead build APP_DIR` (componentize-py; `wit_world` is
generated from the app's wit/ folder at build time).
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        # Set by the gateway from the verified credential; a client can
        # never send it itself.
        values = request.headers().get("bulkhead-subject")
        subject = values[0].decode("utf-8", "replace") if values else ""
        text = f"Hello, {subject}! This is {{NAME}}, in Python, with nothing granted.\n"
        headers = Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        response = OutgoingResponse(headers)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        # The stream is a child of the body: drop it before finishing the body.
        with body.write() as stream:
            stream.blocking_write_and_flush(text.encode("utf-8"))
        OutgoingBody.finish(body, None)
