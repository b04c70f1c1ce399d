// The {{NAME}} function: a wasi:http/incoming-handler component, built with
// componentize-js (StarlingMonkey), which maps the `fetch` event onto it.
//
// It runs in a fresh sandbox for every call, with nothing granted: no files,
// no network, no environment. The gateway has already checked the caller's
// credential and the request's input (bulkhead.toml) before this code runs,
// and tells it who called in the `bulkhead-subject` header.
// Build it with `bulkhead build APP_DIR`.

addEventListener("fetch", (event) => {
  // Set by the gateway from the verified credential; a client can never
  // send it itself.
  const subject = event.request.headers.get("bulkhead-subject") ?? "";
  event.respondWith(
    new Response(`Hello, ${subject}! This is {{NAME}}, in JavaScript, with nothing granted.\n`, {
      status: 200,
      headers: { "content-type": "text/plain; charset=utf-8" },
    }),
  );
});
