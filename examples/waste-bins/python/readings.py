"""GET /bins/{device}/readings: a bin's own readings (ids and fill levels),
for the device or its operator holding the bin's API key. A key reads only
its own bin (403 otherwise, T13); the grant is `read` (T16).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import store
from wit_world.imports.types import IncomingRequest, ResponseOutparam

from common import READINGS, api_key_subject, path_segments, problem, send_json

MAX_RECORDS = 4_000


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        segments = path_segments(request)
        if len(segments) != 3 or segments[0] != "bins" or segments[2] != "readings":
            return problem(response_out, request, 404, "not-found", "No such readings path")
        device = segments[1]
        if api_key_subject(request) != device:
            return problem(response_out, request, 403, "not-your-bin", "This key may only read its own bin")
        prefix = device + "/"
        found: dict[str, int] = {}
        try:
            with store.open(READINGS) as readings:
                cursor = None
                while len(found) < MAX_RECORDS:
                    page = readings.list_keys(cursor)
                    for key in page.keys:
                        if key.startswith(prefix):
                            value = readings.get(key)
                            if value is not None:
                                found[key[len(prefix):]] = int(json.loads(value).get("fill", 0))
                    cursor = page.cursor
                    if cursor is None:
                        break
        except Err:
            return problem(response_out, request, 503, "storage", "The readings are unavailable right now")
        send_json(response_out, 200, {"device": device, "count": len(found), "readings": found})
