//! A small app on the `wstd` framework, routing in the guest (served behind
//! a wildcard route, `/app/{*rest}`):
//!
//! - `/app/hello`     a fixed greeting
//! - `/app/stream`    five lines 100 ms apart, streamed as they are made
//! - `/app/echo`      the request body back, streamed
//! - `/app/trailers`  the request's trailers back as response trailers
//! - `/app/body-fail` a head, then a body that fails
//! - anything else    404
use std::convert::Infallible;

use futures_lite::stream::{once_future, unfold};
use http_body_util::{BodyExt, StreamBody};
use wstd::http::body::{Body, Bytes, Frame};
use wstd::http::{Error, HeaderMap, Request, Response, StatusCode};
use wstd::time::{Duration, Instant};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/app/hello" => Ok(Response::new("Hello from wstd\n".to_owned().into())),
        "/app/stream" => Ok(stream()),
        "/app/echo" => Ok(Response::new(request.into_body())),
        "/app/trailers" => trailers(request).await,
        "/app/body-fail" => Ok(body_fail()),
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("no such route in the app\n".to_owned()))?),
    }
}

fn stream() -> Response<Body> {
    let start = Instant::now();
    let line = move |left: u32| async move {
        if left == 0 {
            return None;
        }
        if left < 5 {
            wstd::task::sleep(Duration::from_millis(100)).await;
        }
        let at = Instant::now().duration_since(start).as_millis();
        let text = format!("line {} at {at} ms\n", 6 - left);
        Some((Ok::<_, Infallible>(Bytes::from(text)), left - 1))
    };
    Response::new(Body::from_try_stream(unfold(5, line)))
}

async fn trailers(request: Request<Body>) -> Result<Response<Body>, Error> {
    let collected = request.into_body().into_boxed_body().collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_else(HeaderMap::new);
    let names: Vec<String> = trailers.keys().map(|k| k.to_string()).collect();
    let data = Bytes::from(format!("trailers: {}\n", names.join(",")));
    let frames = futures_lite::stream::iter([
        Ok::<_, Infallible>(Frame::data(data)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut response = Response::new(Body::from_http_body(StreamBody::new(frames)));
    if !names.is_empty()
        && let Ok(value) = names.join(", ").parse()
    {
        response.headers_mut().insert("trailer", value);
    }
    Ok(response)
}

fn body_fail() -> Response<Body> {
    let body = StreamBody::new(once_future(async move {
        Err::<Frame<Bytes>, _>(anyhow::anyhow!("the body failed on purpose"))
    }));
    Response::new(Body::from_http_body(body))
}
