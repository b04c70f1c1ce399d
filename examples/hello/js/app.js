// The hello function in JavaScript, built with componentize-js (StarlingMonkey).
// The engine maps the `fetch` event onto `wasi:http/incoming-handler`.

const GREETING = "Hello from JavaScript in a sealed compartment!\n";

addEventListener("fetch", (event) => {
  event.respondWith(
    new Response(GREETING, {
      status: 200,
      headers: { "content-type": "text/plain; charset=utf-8" },
    }),
  );
});
