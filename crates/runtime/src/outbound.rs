//! Outbound HTTP from guests. No function holds an outbound grant yet, so
//! every request is refused with `HttpRequestDenied` and logged (T17).

use std::future::Future;

use tracing::warn;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub(crate) struct DenyOutbound {
    pub function: String,
    pub correlation_id: String,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        warn!(
            target: "bulkhead::capability",
            function = %self.function,
            correlation_id = %self.correlation_id,
            capability = "outbound-http",
            host = request.uri().host().unwrap_or(""),
            reason = "no outbound grant",
            "outbound request denied"
        );
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
