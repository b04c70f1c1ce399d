//! What one call's Store holds: WASI with nothing granted, wasi:http with
//! outbound calls refused, a memory limiter, and the guest's captured output.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::data::CallData;
use crate::outbound::Outbound;
use crate::output::GuestOutput;
use crate::sql::SqlCtx;

/// Most resources (fields, requests, responses, bodies, streams,
/// pollables, buckets) one instance may hold at once (T05). wasmtime's
/// default is a million, which with fields of up to 128 KiB each let a
/// guest make the host allocate gigabytes outside its memory cap. A guest
/// past it traps, reported as a memory-limit failure.
pub(crate) const MAX_RESOURCES: usize = 1024;

/// Largest header or trailer map (names and values) a guest may build
/// (wasmtime's default is 128 KiB): twice the default request header cap.
pub(crate) const MAX_FIELDS_BYTES: usize = 32 << 10;

/// Largest chunk an outgoing body buffers per write (wasmtime's default is
/// 1 MiB); each outgoing body holds at most one such chunk unsent.
pub(crate) const OUTGOING_BODY_CHUNK: usize = 64 << 10;

pub struct HostState {
    pub(crate) table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Outbound,
    pub(crate) sql: SqlCtx,
    pub(crate) limits: MemoryCap,
    /// Key-value, secrets and config for this call (T13-T16).
    pub(crate) data: CallData,
}

impl HostState {
    pub(crate) fn new(
        memory_cap: MemoryCap,
        stdout: GuestOutput,
        stderr: GuestOutput,
        hooks: Outbound,
        sql: SqlCtx,
        data: CallData,
    ) -> Self {
        let call = data.call.clone();
        // T05: no preopened directories, no environment, no arguments, no
        // stdin, no network. Runtimes that import these interfaces by habit
        // (Python, JavaScript, Rust std) link and run, and can reach nothing.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(move |addr, use_| {
                crate::sockets::deny(&call, crate::sockets::describe(addr, use_));
                Box::pin(async { false })
            })
            .build();
        // T05: host memory a guest can make the host hold is capped too:
        // every resource (fields, requests, bodies, streams) is an entry
        // in this table, and each fields map is bounded in size.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        Self {
            table,
            wasi,
            http,
            hooks,
            sql,
            limits: memory_cap,
            data,
        }
    }
}

impl HostState {
    /// A socket the guest tried to create: refused, logged and audited
    /// (folded past the call's budget, T09).
    pub(crate) fn deny_socket(&self, what: &str) {
        crate::sockets::deny(&self.data.call, what);
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// Caps the total linear memory of one instance (all its memories together)
/// and remembers whether the cap was hit, so a trap that follows a refused
/// growth is reported as what it is (T05).
pub(crate) struct MemoryCap {
    limit: usize,
    used: usize,
    hit: Arc<AtomicBool>,
}

/// Table growth is capped too, so a guest cannot hoard host memory there.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    pub fn new(limit: usize, hit: Arc<AtomicBool>) -> Self {
        Self {
            limit,
            used: 0,
            hit,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.used.saturating_add(growth);
        if total > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
