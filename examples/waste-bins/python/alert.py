"""Run by each message of `alerts`: one SMS to the crew through the SMS
API, the one outbound origin granted (T17), with its token read from the
secret store (T14; redacted from anything this call prints).

At least once in, once out in effect: the SMS carries an Idempotency-Key
(`DEVICE/READING`), and `alerts-sent` remembers each alert sent, so a
message delivered again is acknowledged without a second SMS. The function
runs one message at a time (`max_concurrent_requests = 1`), so two copies
of one alert are never sent side by side. A crash between the SMS and the
record sends it once more: an SMS API honouring the key drops it.

One text per bin per `alert-cooldown-seconds` (default an hour): a bin, or
a key pulled out of one, posting full readings under fresh ids would
otherwise text the crew on every post, a bill Bulkhead does not meter (the
SMS provider's; T04, outside review). Alerts inside the window are
acknowledged without a text.
"""

import json
import time

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, wasi_config_store, wasi_keyvalue_store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Post,
    OutgoingBody,
    OutgoingRequest,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)

from common import read_json, reading_key, send

SENT = "alerts-sent"
DEFAULT_COOLDOWN = 3600


def config(name: str) -> str | None:
    try:
        return wasi_config_store.get(name)
    except Err:
        return None


def send_sms(key: str, text: str) -> bool:
    """POST the SMS to the granted origin; True on a 2xx answer."""
    origin = config("sms-origin")
    token = config("sms-token")
    recipient = config("sms-to")
    if not origin or not token or not recipient:
        return False
    scheme, _, authority = origin.partition("://")
    body = json.dumps({"to": recipient, "text": text}).encode()
    headers = [
        ("content-type", b"application/json"),
        ("authorization", b"Bearer " + token.encode()),
        ("idempotency-key", key.encode()),
    ]
    request = OutgoingRequest(Fields.from_list(headers))
    request.set_method(Method_Post())
    request.set_scheme(Scheme_Https() if scheme == "https" else Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query("/v1/messages")
    try:
        out = request.body()
        future = outgoing_handler.handle(request, None)
        with out.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(out, None)
        with future.subscribe() as ready:
            ready.block()
        outcome = future.get()
        # Some(Ok(Ok(response))) is an answer; anything else is none.
        if not isinstance(outcome, Ok) or not isinstance(outcome.value, Ok):
            return False
        return 200 <= outcome.value.value.status() < 300
    except Exception:
        return False


def cooldown_seconds() -> int:
    try:
        return max(0, int(config("alert-cooldown-seconds") or DEFAULT_COOLDOWN))
    except ValueError:
        return DEFAULT_COOLDOWN


def cooling(sent, device: str, now: int) -> bool:
    """True when the bin was texted about less than the cooldown ago."""
    last = sent.get(f"cooldown/{device}")
    try:
        return last is not None and now - int(last) < cooldown_seconds()
    except ValueError:
        return False


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            alert = read_json(request)
            device, reading_id, fill = alert["device"], alert["id"], int(alert["fill"])
        except (ValueError, KeyError, TypeError):
            return send(response_out, 422, b"malformed alert", "text/plain")
        key = reading_key(device, reading_id)
        try:
            with wasi_keyvalue_store.open(SENT) as sent:
                if sent.exists(key):
                    return send(response_out, 200, b"already sent", "text/plain")
                now = int(time.time())
                if cooling(sent, device, now):
                    sent.set(key, b"cooldown")
                    return send(response_out, 200, b"cooling down", "text/plain")
                # The device id matched ^bin-[0-9]{1,6}$ at the gateway.
                if not send_sms(key, f"{device} is {fill}% full"):
                    # Failed: retried with back-off, then dead-lettered.
                    return send(response_out, 502, b"sms not sent", "text/plain")
                sent.set(key, b"1")
                sent.set(f"cooldown/{device}", str(now).encode())
        except Err:
            return send(response_out, 503, b"store unavailable", "text/plain")
        send(response_out, 200, b"sent", "text/plain")
