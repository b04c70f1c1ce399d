// GET /badge: the caller's own badge as SVG. `attendees` is subject-scoped:
// the host opens the caller's own records only, so there is no way to ask
// for someone else's badge (T13). Every text that reaches the SVG is
// escaped, so a name cannot inject markup or script (T10).
import { open } from "wasi:keyvalue/store@0.2.0-draft";

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`).slice(0, 400);

function badge(record) {
  const name = escape(record.name || record.handle);
  const handle = escape(record.handle);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="400" height="200" viewBox="0 0 400 200">
<rect width="400" height="200" rx="16" fill="#0b3d5c"/>
<text x="24" y="48" font-family="sans-serif" font-size="18" fill="#9fd3f0">Serverless Security Conf</text>
<text x="24" y="110" font-family="sans-serif" font-size="30" fill="#ffffff">${name}</text>
<text x="24" y="150" font-family="monospace" font-size="18" fill="#9fd3f0">@${handle}</text>
</svg>
`;
}

addEventListener("fetch", (event) => {
  let record;
  try {
    const stored = open("attendees").get("attendee");
    record = stored ? JSON.parse(new TextDecoder().decode(stored)) : undefined;
  } catch {
    record = null;
  }
  if (!record) {
    const status = record === null ? 503 : 404;
    const title = record === null ? "Badges are unavailable right now" : "Register first: POST /register/{handle}";
    event.respondWith(
      new Response(JSON.stringify({ title, status }), {
        status,
        headers: { "content-type": "application/problem+json" },
      }),
    );
    return;
  }
  event.respondWith(
    new Response(badge(record), {
      status: 200,
      headers: {
        "content-type": "image/svg+xml",
        // An SVG opened directly must not run script (T10).
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
        "cache-control": "private, no-store",
      },
    }),
  );
});
