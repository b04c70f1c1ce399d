//! The smallest useful function: answers every request with a greeting.
use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("static header is valid");
        let resp = OutgoingResponse::new(headers);
        let body = resp.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(resp));
        let mut out = body.write().expect("stream is taken once");
        out.write_all(b"Hello from a sealed compartment!\n")
            .expect("write succeeds");
        drop(out);
        OutgoingBody::finish(body, None).expect("finish succeeds");
    }
}
