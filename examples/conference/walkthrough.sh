#!/usr/bin/env bash
# A walk through the conference app against a running server: a token for a
# test attendee, three calls that succeed, two attacks that are refused.
# `scripts/serve-example` runs it once the server listens; run it again any
# time, and the end-to-end test (crates/cli/tests/conference.rs) runs
# exactly this file.
#
#   examples/conference/walkthrough.sh [BASE_URL]     # default http://127.0.0.1:8080
#
# BULKHEAD names the bulkhead binary (default: `bulkhead` on PATH). Exits 1
# if any answer is not the one shown as expected.
set -euo pipefail

BASE="${1:-http://127.0.0.1:8080}"
BULKHEAD="${BULKHEAD:-bulkhead}"
APP="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BODY="$(mktemp)"
trap 'rm -f "$BODY"' EXIT
failed=0

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
    say() { printf '\n%s\n' "$*"; }
fi

# call EXPECTED LABEL CURL_ARGS...: show the call, make it, show the answer.
call() {
    local expected="$1" label="$2" status
    shift 2
    printf '$ curl %s\n' "$label"
    status="$(curl -sS -o "$BODY" -w '%{http_code}' "$@")"
    head -c 700 "$BODY"
    [[ "$(tail -c 1 "$BODY")" == "" ]] || echo
    if [[ "$status" == "$expected" ]]; then
        printf '%s (as expected)\n' "$status"
    else
        printf '%s: expected %s\n' "$status" "$expected"
        failed=1
    fi
}

say "1. A token for a test attendee (a 15-minute session in this app's dev state only):"
printf '$ TOKEN=$(bulkhead dev login examples/conference --as ada)\n'
TOKEN="$("$BULKHEAD" dev login "$APP" --as ada 2>/dev/null)"
AUTH="authorization: Bearer $TOKEN"

say "2. Three calls that succeed:"
call 200 "$BASE/talks" "$BASE/talks"
call 201 "-X POST -H \"\$AUTH\" -H 'content-type: application/json' -d '{\"name\": \"Ada Lovelace\"}' $BASE/register/ada" \
    -X POST -H "$AUTH" -H 'content-type: application/json' -d '{"name": "Ada Lovelace"}' "$BASE/register/ada"
call 200 "-X POST -H \"\$AUTH\" -H 'content-type: application/json' -d '{\"rating\": 5}' $BASE/talks/1/rating" \
    -X POST -H "$AUTH" -H 'content-type: application/json' -d '{"rating": 5}' "$BASE/talks/1/rating"
printf '(also: curl -H "$AUTH" %s/badge for the SVG badge, %s/me/data to export, -X DELETE to erase)\n' "$BASE" "$BASE"

say "3. Two attacks, refused before any code runs:"
echo "SQL injection in the rating: the body must match schemas/rating.json (T10)"
call 400 "-X POST -H \"\$AUTH\" -H 'content-type: application/json' -d '{\"rating\": \"5); DROP TABLE ratings; --\"}' $BASE/talks/1/rating" \
    -X POST -H "$AUTH" -H 'content-type: application/json' -d '{"rating": "5); DROP TABLE ratings; --"}' "$BASE/talks/1/rating"
echo "Another attendee's data: /me/data takes no parameters; the store is scoped to the caller (T13)"
call 400 "-H \"\$AUTH\" '$BASE/me/data?subject=session:bob'" \
    -H "$AUTH" "$BASE/me/data?subject=session:bob"

say "4. Where to look next:"
cat <<MORE
  bulkhead threat-model examples/conference          # the threat model: every control, mitigated or open
  bulkhead audit verify examples/conference          # the audit trail's hash chain (the refusals above are in it)
  bulkhead data export examples/conference --subject session:ada   # ada's records in subject-scoped stores (her ratings: GET /me/data)
  curl -s http://127.0.0.1:9901/metrics              # admin listener: loopback only in dev
MORE
exit "$failed"
