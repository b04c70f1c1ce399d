"""GET /me/data and DELETE /me/data: the caller exports or erases what the
app holds about them (T20): their attendee record and their ratings.

Both are theirs only: the attendee record sits in a subject-scoped store,
and the ratings are selected and deleted by the verified subject the
gateway set, through the two statements the grant declares.
"""

import json

from componentize_py_types import Err
from wit_world import exports
# The world imports one `store` interface: wasi:keyvalue's.
from wit_world.imports import sql, store as wasi_keyvalue_store
from wit_world.imports.types import IncomingRequest, Method_Delete, ResponseOutparam

from common import problem, send, send_json, subject

MY_RATINGS = "SELECT talk_id, rating, rated_at FROM ratings WHERE subject = ?1 ORDER BY talk_id"
ERASE_RATINGS = "DELETE FROM ratings WHERE subject = ?1"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        me = [sql.Value_Text(subject(request))]
        try:
            with wasi_keyvalue_store.open("attendees") as attendees:
                if isinstance(request.method(), Method_Delete):
                    attendees.delete("attendee")
                    erased = sql.query("ratings", ERASE_RATINGS, me).changes
                    return send_json(response_out, 200, {"erased": {"attendee": True, "ratings": erased}})
                record = attendees.get("attendee")
            rows = sql.query("ratings", MY_RATINGS, me).rows
        except Err:
            return problem(response_out, request, 503, "storage", "Your data is unavailable right now")
        ratings = [dict(zip(("talk", "rating", "rated_at"), (c.value for c in row.values))) for row in rows]
        export = {
            "subject": subject(request),
            "attendee": json.loads(record) if record else None,
            "ratings": ratings,
        }
        send(
            response_out,
            200,
            json.dumps(export, sort_keys=True, indent=2).encode(),
            "application/json",
            [("content-disposition", b'attachment; filename="my-data.json"')],
        )
