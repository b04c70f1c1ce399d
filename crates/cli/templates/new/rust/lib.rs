//! The {{NAME}} function: a `wasi:http/incoming-handler` component.
//!
//! It runs in a fresh sandbox for every call, with nothing granted: no
//! files, no network, no environment. The gateway has already checked the
//! caller's credential and the request's input (bulkhead.toml) before this
//! code runs, and tells it who called in the `bulkhead-subject` header.
//! Build it with `bulkhead build APP_DIR`.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Function);

struct Function;

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // Set by the gateway from the verified credential; a client can
        // never send it itself.
        let subject = request
            .headers()
            .get("bulkhead-subject")
            .into_iter()
            .next()
            .map(|value| String::from_utf8_lossy(&value).into_owned())
            .unwrap_or_default();
        let text = format!("Hello, {subject}! This is {{NAME}}, in Rust, with nothing granted.\n");
        // Every step below fails only if the host breaks its contract; the
        // function then ends without an answer and the caller gets 500.
        let Ok(headers) = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )]) else {
            return;
        };
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        let Ok(mut out) = body.write() else { return };
        if out.write_all(text.as_bytes()).is_err() || out.flush().is_err() {
            return;
        }
        // The stream is a child of the body: drop it before finishing the body.
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
