"""Daily at 06:00 UTC (`trigger = { schedule = "0 0 6 * * *" }`): a summary
of the readings kept (the last 30 days, the store's retention), printed as
one JSON line; the host logs it as the function's output, escaped (T07),
under the run's correlation ID (T08). Read-only: the grant is `read`.
"""

import json
import sys

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import store
from wit_world.imports.types import IncomingRequest, ResponseOutparam

from common import READINGS, send

# A call may do at most 10 000 store operations (the host's cap, T01):
# stop reading well before it.
MAX_RECORDS = 4_000


def all_keys(bucket) -> list[str]:
    keys: list[str] = []
    cursor = None
    while len(keys) < MAX_RECORDS:
        page = bucket.list_keys(cursor)
        keys.extend(page.keys)
        cursor = page.cursor
        if cursor is None:
            break
    return keys[:MAX_RECORDS]


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        devices: dict[str, dict] = {}
        try:
            with store.open(READINGS) as readings:
                for key in all_keys(readings):
                    value = readings.get(key)
                    if value is None:
                        continue  # expired since it was listed
                    reading = json.loads(value)
                    bin_ = devices.setdefault(reading["device"], {"readings": 0, "max_fill": 0, "last": ""})
                    bin_["readings"] += 1
                    bin_["max_fill"] = max(bin_["max_fill"], int(reading.get("fill", 0)))
                    bin_["last"] = max(bin_["last"], str(reading.get("at", "")))
        except Err:
            return send(response_out, 503, b"store unavailable", "text/plain")
        summary = {
            "summary": "waste-bins",
            "devices": len(devices),
            "readings": sum(d["readings"] for d in devices.values()),
            "full": sorted(name for name, d in devices.items() if d["max_fill"] >= 80),
        }
        print(json.dumps(summary, sort_keys=True), file=sys.stdout, flush=True)
        send(response_out, 200, b"summarised", "text/plain")
