//! Outbound HTTP from guests. No function holds an outbound grant yet, so
//! every request is refused with `HttpRequestDenied` and logged (T17).

use std::future::Future;

use bulkhead_store::{AuditEvent, AuditLog};
use tracing::warn;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

pub(crate) struct DenyOutbound {
    pub function: String,
    pub correlation_id: String,
    pub audit: AuditLog,
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
        let host = request.uri().host().unwrap_or("").to_string();
        warn!(
            target: "bulkhead::capability",
            function = %self.function,
            correlation_id = %self.correlation_id,
            capability = "outbound-http",
            host,
            reason = "no outbound grant",
            "outbound request denied"
        );
        self.audit.record(
            AuditEvent::new("capability.denied")
                .correlation_id(&self.correlation_id)
                .function(&self.function)
                .detail("capability", "outbound-http")
                .detail("host", host)
                .detail("reason", "no outbound grant"),
        );
        Box::new(async { Err(Error::HttpRequestDenied) })
    }
}
