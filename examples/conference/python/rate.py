"""POST /talks/{id}/rating: the caller rates a talk 1 to 5, once (a second
rating replaces the first).

The grant allows exactly the two statements below (T06, T16): the host
refuses any other text, and every value is a bound parameter, so nothing
the caller sends can become SQL. The gateway already checked `{id}` against
its pattern and the body against schemas/rating.json (T10).
"""

import time

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import sql
from wit_world.imports.types import IncomingRequest, ResponseOutparam

from common import path_segments, problem, read_json, send_json, subject

UPSERT = (
    "INSERT INTO ratings (talk_id, subject, rating, rated_at) VALUES (?1, ?2, ?3, ?4) "
    "ON CONFLICT (talk_id, subject) DO UPDATE SET rating = excluded.rating, rated_at = excluded.rated_at"
)
SUMMARY = "SELECT COUNT(*), AVG(rating) FROM ratings WHERE talk_id = ?1"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        segments = path_segments(request)  # talks, {id}, rating
        try:
            talk = int(segments[1])
            rating = read_json(request).get("rating")
        except (IndexError, ValueError):
            return problem(response_out, request, 400, "invalid-rating", "The rating is not valid")
        if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
            return problem(response_out, request, 400, "invalid-rating", "A rating is an integer from 1 to 5")
        params = [
            sql.Value_Integer(talk),
            sql.Value_Text(subject(request)),
            sql.Value_Integer(rating),
            sql.Value_Integer(int(time.time())),
        ]
        try:
            sql.query("ratings", UPSERT, params)
            summary = sql.query("ratings", SUMMARY, [sql.Value_Integer(talk)])
        except Err as e:
            if isinstance(e.value, sql.Error_Invalid):
                # The foreign key: no such talk.
                return problem(response_out, request, 404, "no-such-talk", "There is no such talk")
            return problem(response_out, request, 503, "storage", "Ratings are unavailable")
        count, average = (cell.value for cell in summary.rows[0].values)
        send_json(response_out, 200, {"talk": talk, "your_rating": rating, "ratings": count, "average": average})
