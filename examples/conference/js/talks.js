// GET /talks: the public listing with each talk's rating, read-only.
// The grant is `read` with this one statement (T06, T16): the host opens
// the database read-only and refuses any other text. Public on purpose
// (see public_reason in bulkhead.toml), so it holds no personal data: only
// counts and averages leave the store, never who rated what.
import { query } from "bulkhead:sql/sql@0.1.0";

const LISTING =
  "SELECT t.id, t.title, t.speaker, COUNT(r.rating), AVG(r.rating) " +
  "FROM talks t LEFT JOIN ratings r ON r.talk_id = t.id GROUP BY t.id ORDER BY t.id";

const cell = (value) => (typeof value.val === "bigint" ? Number(value.val) : (value.val ?? null));

addEventListener("fetch", (event) => {
  let body;
  let status = 200;
  try {
    const result = query("ratings", LISTING, []);
    body = {
      talks: result.rows.map((row) => {
        const [id, title, speaker, ratings, average] = row.values.map(cell);
        return { id, title, speaker, ratings, average };
      }),
    };
  } catch {
    status = 503;
    body = { title: "The listing is unavailable right now", status };
  }
  event.respondWith(
    new Response(JSON.stringify(body), {
      status,
      headers: {
        "content-type": status === 200 ? "application/json" : "application/problem+json",
        // The listing is the same for everyone: let caches keep it briefly.
        "cache-control": "public, max-age=30",
      },
    }),
  );
});
