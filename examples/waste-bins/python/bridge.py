"""POST /telemetry/{device}: a bin reports a reading; it is enqueued on
`telemetry` and acknowledged with 202 once the queue has committed it.

The gateway already refused a device id off the pattern (`^bin-[0-9]{1,6}$`,
T10: the original logged it raw, T07), a body off the schema, and a call
without a valid API key (T11). Here: a key speaks only for its own bin, so
the path's device must be the key's subject (403 otherwise, T13). The
message holds the verified device and the checked reading, nothing else.
A 202 means committed (durable under SIGKILL); on any refusal the device
gets a 503 and retries, and a retried reading is stored once (process.py).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import producer
from wit_world.imports.types import IncomingRequest, ResponseOutparam

from common import api_key_subject, path_segments, problem, read_json, send_json

FIELDS = ("id", "fill", "temperature", "at")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        segments = path_segments(request)
        if len(segments) != 2 or segments[0] != "telemetry":
            return problem(response_out, request, 404, "not-found", "No such telemetry path")
        device = segments[1]
        if api_key_subject(request) != device:
            return problem(response_out, request, 403, "not-your-bin", "This key may only report for its own bin")
        try:
            body = read_json(request)
        except ValueError:
            return problem(response_out, request, 400, "invalid-body", "The body is not a JSON object")
        message = {"device": device, **{field: body[field] for field in FIELDS if field in body}}
        try:
            producer.send("telemetry", json.dumps(message, sort_keys=True).encode())
        except Err:
            # Not granted, over the size or cap, or the store failed: the
            # host audited why; the device retries later.
            return problem(response_out, request, 503, "not-queued", "The reading was not queued; send it again later")
        send_json(response_out, 202, {"queued": True, "reading": message["id"]})
