//! The hello function in Rust: a `wasi:http/incoming-handler` that answers
//! every request with a plain-text greeting.

use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Hello);

const GREETING: &[u8] = b"Hello from Rust in a sealed compartment!\n";

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("a static header is valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("the stream is taken once");
        out.write_all(GREETING).expect("the write succeeds");
        out.flush().expect("the flush succeeds");
        // The stream is a child of the body: drop it before finishing the body.
        drop(out);
        OutgoingBody::finish(body, None).expect("finishing succeeds");
    }
}
