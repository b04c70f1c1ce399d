"""POST /register/{handle}: store the caller's attendee record.

The record lives in `attendees`, a subject-scoped store (`scope =
"subject"`): the host keys it by the verified caller, so this function
cannot read or overwrite anyone else's record whatever key it picks (T13).
It is personal data kept 48 hours (`retention = "48h"`, T20). The GitHub
profile comes through the one outbound origin granted (T17), with a token
read as a secret (T14) that never leaves this call.
"""

import json
import time

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, wasi_config_store, wasi_keyvalue_store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingRequest,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)

from common import path_segments, problem, read_body, read_json, send_json

MAX_PROFILE = 64 * 1024


def github_profile(handle: str) -> dict | None:
    """The public profile of `handle` from the granted GitHub origin, or
    None when it cannot be had (no network, not found, over the limits)."""
    origin = wasi_config_store.get("github-origin") or "https://api.github.com"
    scheme, _, authority = origin.partition("://")
    headers = [("accept", b"application/vnd.github+json"), ("user-agent", b"bulkhead-conference")]
    try:
        token = wasi_config_store.get("github-token")
    except Err:
        token = None
    if token:
        headers.append(("authorization", b"Bearer " + token.encode()))
    request = OutgoingRequest(Fields.from_list(headers))
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Https() if scheme == "https" else Scheme_Http())
    request.set_authority(authority)
    # The handle matched [A-Za-z0-9-]{1,39} at the gateway (T10).
    request.set_path_with_query(f"/users/{handle}")
    try:
        future = outgoing_handler.handle(request, None)
        with future.subscribe() as ready:
            ready.block()
        outcome = future.get()
        # Some(Ok(Ok(response))) is an answer; anything else is none.
        if not isinstance(outcome, Ok) or not isinstance(outcome.value, Ok):
            return None
        response = outcome.value.value
        if response.status() != 200:
            return None
        profile = json.loads(read_body(response.consume(), MAX_PROFILE))
    except Exception:
        return None
    if not isinstance(profile, dict):
        return None
    return {key: profile.get(key) for key in ("id", "login", "name", "public_repos") if key in profile}


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        segments = path_segments(request)
        if len(segments) != 2:
            return problem(response_out, request, 404, "not-found", "No such registration path")
        handle = segments[1]
        try:
            body = read_json(request)
        except ValueError:
            return problem(response_out, request, 400, "invalid-body", "The body is not a JSON object")
        record = {
            "handle": handle,
            "name": body.get("name", ""),
            "registered_at": int(time.time()),
            "github": github_profile(handle),
        }
        with wasi_keyvalue_store.open("attendees") as attendees:
            attendees.set("attendee", json.dumps(record).encode())
        send_json(response_out, 201, record)
