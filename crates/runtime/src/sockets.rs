//! Sockets, bound to deny-all (T05, T18): `wasi:sockets` links because
//! language runtimes import it by habit, but no socket is ever created.
//! The two create functions and name lookup are shadowed with ones that
//! refuse and audit (so a guest probing the network leaves a record), and
//! the address check behind them refuses and audits every address should
//! it ever be reached.
//! Network access is a grant (`outbound`), and only through wasi:http.

use std::net::SocketAddr;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, Val};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::{TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::call::{CallContext, Target};
use crate::host::HostState;

/// The wasi:sockets version wasmtime-wasi 48 defines; any 0.2.x import
/// links to it.
const SOCKETS: &str = "0.2.12";

/// Why every socket is refused.
const REASON: &str = "sockets are bound to deny-all; use an outbound grant";

/// A refused socket operation, reported through the call's one reporter
/// (folded per call: a guest looping on sockets cannot flood, T09).
pub(crate) fn deny(call: &CallContext, what: &str) {
    call.deny("sockets", Target::Attempt(what), REASON);
}

/// What the address check reports: the operation and family, never the
/// address; fixed text, so nothing is formatted before the per-call budget.
pub(crate) fn describe(addr: SocketAddr, use_: SocketAddrUse) -> &'static str {
    use SocketAddrUse::*;
    match (use_, addr.is_ipv4()) {
        (TcpBind, true) => "TcpBind to an IPv4 address",
        (TcpBind, false) => "TcpBind to an IPv6 address",
        (TcpListen, true) => "TcpListen to an IPv4 address",
        (TcpListen, false) => "TcpListen to an IPv6 address",
        (TcpAccept, true) => "TcpAccept to an IPv4 address",
        (TcpAccept, false) => "TcpAccept to an IPv6 address",
        (TcpConnect, true) => "TcpConnect to an IPv4 address",
        (TcpConnect, false) => "TcpConnect to an IPv6 address",
        (UdpBind, true) => "UdpBind to an IPv4 address",
        (UdpBind, false) => "UdpBind to an IPv6 address",
        (UdpSend, true) => "UdpSend to an IPv4 address",
        (UdpSend, false) => "UdpSend to an IPv6 address",
        (UdpReceive, true) => "UdpReceive to an IPv4 address",
        (UdpReceive, false) => "UdpReceive to an IPv6 address",
    }
}

/// Replace the create functions `add_to_linker_async` defined.
pub(crate) fn shadow_create(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut tcp = linker.instance(&format!("wasi:sockets/tcp-create-socket@{SOCKETS}"))?;
    tcp.func_wrap(
        "create-tcp-socket",
        |store: StoreContextMut<'_, HostState>, (_family,): (IpAddressFamily,)| {
            store.data().deny_socket("create-tcp-socket");
            Ok((Err::<Resource<TcpSocket>, ErrorCode>(
                ErrorCode::AccessDenied,
            ),))
        },
    )?;
    let mut udp = linker.instance(&format!("wasi:sockets/udp-create-socket@{SOCKETS}"))?;
    udp.func_wrap(
        "create-udp-socket",
        |store: StoreContextMut<'_, HostState>, (_family,): (IpAddressFamily,)| {
            store.data().deny_socket("create-udp-socket");
            Ok((Err::<Resource<UdpSocket>, ErrorCode>(
                ErrorCode::AccessDenied,
            ),))
        },
    )?;
    // Name lookups are refused too (`allow_ip_name_lookup(false)`), and
    // audited here. Untyped: the stream type is private to wasmtime-wasi.
    let mut dns = linker.instance(&format!("wasi:sockets/ip-name-lookup@{SOCKETS}"))?;
    dns.func_new_async(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, HostState>, _ty, params: &[Val], results: &mut [Val]| {
            Box::new(async move {
                store.data().deny_socket("resolve-addresses");
                // A dynamic host function must release the borrowed network.
                for param in params {
                    if let Val::Resource(network) = param {
                        network.resource_drop_async(&mut store).await?;
                    }
                }
                if let Some(result) = results.first_mut() {
                    *result = Val::Result(Err(Some(Box::new(Val::Enum("access-denied".into())))));
                }
                Ok(())
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
