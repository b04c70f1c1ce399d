"""Run by each message of `telemetry` (at least once: a message can come
again after a crash, a timeout or a device's retry).

Idempotent in effect: the reading is stored under `DEVICE/READING` with a
value made only from the reading itself, so storing it twice stores the
same record; a reading already stored is acknowledged and nothing else is
done. When the bin is at or over the `fill-alert-percent` config value,
an alert is enqueued on `alerts` BEFORE the reading is stored: a crash in
between sends the alert again on redelivery (alert.py sends each alert's
SMS once), never loses it. `readings` keeps records 30 days (T20).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import producer, wasi_config_store, wasi_keyvalue_store
from wit_world.imports.types import IncomingRequest, ResponseOutparam

from common import READINGS, read_json, reading_key, send

DEFAULT_THRESHOLD = 80


def threshold() -> int:
    try:
        return int(wasi_config_store.get("fill-alert-percent") or DEFAULT_THRESHOLD)
    except (Err, ValueError):
        return DEFAULT_THRESHOLD


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            reading = read_json(request)
            device, reading_id = reading["device"], reading["id"]
        except (ValueError, KeyError):
            # Only the bridge sends here, and it sends what the schema
            # allowed: a malformed message fails (retried, then dead-lettered).
            return send(response_out, 422, b"malformed message", "text/plain")
        key = reading_key(device, reading_id)
        record = json.dumps(reading, sort_keys=True).encode()
        try:
            with wasi_keyvalue_store.open(READINGS) as readings:
                if readings.exists(key):
                    return send(response_out, 200, b"duplicate", "text/plain")
                if int(reading.get("fill", 0)) >= threshold():
                    producer.send("alerts", record)
                readings.set(key, record)
        except Err:
            # The store or the queue failed: fail the delivery, so it is
            # retried with back-off, then dead-lettered (T09: audited).
            return send(response_out, 503, b"not stored", "text/plain")
        send(response_out, 200, b"stored", "text/plain")
