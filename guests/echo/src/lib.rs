//! Echoes what the function was handed: method, path, headers and body, as
//! JSON, with the scheme, the body's length and the trailers that followed
//! the body. Tests use it to see exactly what the gateway let through. It also
//! prints one line to stdout on every call, so a test can count the calls
//! that reached it in the log (`bulkhead::guest` records, by correlation ID).
use std::io::{Read as _, Write as _};

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};

wasip2::http::proxy::export!(Echo);

struct Echo;

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        println!("echo called");
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Other(m) => m,
        };
        let headers: Vec<(String, String)> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let scheme = match request.scheme() {
            Some(Scheme::Http) => "http".to_string(),
            Some(Scheme::Https) => "https".to_string(),
            Some(Scheme::Other(s)) => s,
            None => String::new(),
        };
        let mut body = Vec::new();
        let mut trailers: Vec<(String, String)> = Vec::new();
        if let Ok(incoming) = request.consume() {
            if let Ok(mut stream) = incoming.stream() {
                let _ = stream.read_to_end(&mut body);
            }
            // The stream must be gone before the trailers can be had.
            let future = IncomingBody::finish(incoming);
            future.subscribe().block();
            if let Some(Ok(Ok(Some(fields)))) = future.get() {
                trailers = fields
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
            }
        }
        let reply = serde_json::json!({
            "method": method,
            "path_with_query": request.path_with_query(),
            "authority": request.authority(),
            "scheme": scheme,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
            "body_length": body.len(),
            "trailers": trailers,
        });
        let headers = Fields::from_list(&[(
            "content-type".to_string(),
            b"application/json".to_vec(),
        )])
        .expect("static header is valid");
        let resp = OutgoingResponse::new(headers);
        let out_body = resp.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(resp));
        let mut out = out_body.write().expect("stream is taken once");
        out.write_all(reply.to_string().as_bytes())
            .expect("write succeeds");
        drop(out);
        OutgoingBody::finish(out_body, None).expect("finish succeeds");
    }
}
