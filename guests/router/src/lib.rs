//! A tiny in-guest router, as apps built on itty-router, `wstd` or an
//! axum-like router have: one component serving many paths behind a
//! wildcard route (`/api/{*rest}`). It answers `/api/health` and
//! `/api/users/{id}`, and its own 404 JSON for anything else, each echoing
//! the path it was handed. It prints one line to stdout on every call, so
//! a test can count the calls that reached it in the log.
use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Router);

struct Router;

impl wasip2::exports::http::incoming_handler::Guest for Router {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        println!("router called");
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(p, _)| p);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (status, reply) = match segments.as_slice() {
            ["api", "health"] => (200, serde_json::json!({"route": "health"})),
            ["api", "users", id] => (200, serde_json::json!({"route": "user", "id": id})),
            _ => (
                404,
                serde_json::json!({"error": "no such route in the guest"}),
            ),
        };
        let mut reply = reply;
        reply["path_with_query"] = serde_json::json!(path_with_query);
        respond(response_out, status, reply.to_string().as_bytes());
    }
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
        .expect("static header is valid");
    let resp = OutgoingResponse::new(headers);
    resp.set_status_code(status).expect("a valid status");
    let out_body = resp.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(resp));
    let mut stream = out_body.write().expect("stream is taken once");
    stream.write_all(body).expect("write succeeds");
    drop(stream);
    OutgoingBody::finish(out_body, None).expect("finish succeeds");
}
