//! A bound on every message a SQL store's connection reads from
//! PostgreSQL (T05). The driver reads a message whole before handing it
//! on, so one guest statement under a read grant that computed a huge
//! value (`SELECT repeat('x', 500000000)`) made the node hold all of it,
//! the 4 MiB result bound refusing it only afterwards: a few such calls
//! at once could take a node's memory (outside review of issue 16). Here
//! the bytes are counted as they arrive: a message whose header announces
//! more than the bound ends the connection before its body is read, and
//! the server's session ends with it, failing to send the rest.
//!
//! The stream is the node's own socket (the driver's cannot be wrapped),
//! connected as the driver would (each host in turn, keepalives, the TCP
//! user timeout) and, with TLS, bounded above the TLS layer, where the
//! messages are; unlike the driver, the connect timeout covers each host
//! from the socket to the login. The node's own pools connect this way
//! too, their messages unbounded. Cancelling a statement opens the same
//! kind of socket, to every host at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, NoTls, TlsConnect};
use tokio_postgres::{CancelToken, Client, Config, Error};

use crate::pg_tls::{MakeRustlsConnect, RustlsConnect, RustlsStream};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a SQL store's connections read past two sizes: messages over the
/// bound (each ended its connection) and large ones (each grew its
/// connection's read buffer, which the connection keeps): counted, so a
/// call can tell that its own answer was one (another call's at the same
/// moment reads the same way: both are refusals, or both reconnect).
#[derive(Default)]
pub(crate) struct MessageCounts {
    pub(crate) over: AtomicU64,
    pub(crate) large: AtomicU64,
}

/// A message this large grows a connection's read buffer for good: the
/// connection is not pooled again after one.
pub(crate) const LARGE_MESSAGE: u32 = 1 << 20;

/// How the pools of a SQL store's roles connect: each message read is at
/// most `max_message` bytes.
#[derive(Clone)]
pub(crate) struct BoundedConnect {
    pub(crate) tls: Option<MakeRustlsConnect>,
    pub(crate) max_message: u32,
    pub(crate) counts: Arc<MessageCounts>,
    /// The role the pool logs in as, for the debug log.
    pub(crate) role: Arc<str>,
    /// Woken at each notification a connection gets (the deploy
    /// listener's); without it, notifications are dropped.
    pub(crate) notify: Option<tokio::sync::mpsc::Sender<()>>,
}

impl BoundedConnect {
    /// The node's own connections to `config`'s database: messages
    /// unbounded, notifications dropped.
    pub(crate) fn node(tls: Option<MakeRustlsConnect>, config: &Config) -> Self {
        Self {
            tls,
            max_message: u32::MAX,
            counts: Arc::default(),
            role: config.get_user().unwrap_or_default().into(),
            notify: None,
        }
    }

    /// `stream` bounded; `plaintext` when it is not inside TLS.
    fn bound<S>(&self, stream: S, plaintext: bool) -> Bounded<S> {
        Bounded {
            stream,
            framing: Framing::new(plaintext),
            max_message: self.max_message,
            counts: self.counts.clone(),
            role: self.role.clone(),
        }
    }

    /// A session on the `i`th host, as the URL asks of it, started within
    /// the URL's connect timeout, handshakes and login included (second
    /// outside review: a host that took the connection and never answered
    /// held it past the pool's own bound, and the next host was never
    /// tried).
    async fn connect_to(
        &self,
        config: &Config,
        i: usize,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), Error> {
        match tokio::time::timeout(per_host_timeout(config), self.start_on(config, i)).await {
            Ok(started) => started,
            Err(_) => Err(failed(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server did not start a session within the connect timeout",
            ))
            .await),
        }
    }

    async fn start_on(
        &self,
        config: &Config,
        i: usize,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), Error> {
        let (socket, host) = open_socket(config, i).await?;
        let (client, task) = match self.tls.clone() {
            Some(make) => {
                let tls = BoundedTls {
                    tls: rustls_for(make, &host).await?,
                    connect: self.clone(),
                };
                let (client, connection) = config.connect_raw(socket, tls).await?;
                (client, drive(connection, self.notify.clone()))
            }
            None => {
                let (client, connection) =
                    config.connect_raw(self.bound(socket, true), NoTls).await?;
                (client, drive(connection, self.notify.clone()))
            }
        };
        // As the driver's own connect: a standby does not do for a URL
        // that asks for a server that takes writes.
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
            let rows = client.simple_query("SHOW transaction_read_only").await?;
            let read_only = rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("on"))
            });
            if read_only {
                return Err(failed(io::Error::other(
                    "the server is read-only and the URL asks for target_session_attrs=read-write",
                ))
                .await);
            }
        }
        Ok((client, task))
    }
}

impl deadpool_postgres::Connect for BoundedConnect {
    /// Each of the URL's hosts in turn (shuffled by `load_balance_hosts=
    /// random`), the next one tried when a session cannot start on one
    /// (outside review: only the first socket that opened was tried).
    fn connect(
        &self,
        config: &Config,
    ) -> BoxFuture<'_, Result<(Client, tokio::task::JoinHandle<()>), Error>> {
        let config = config.clone();
        Box::pin(async move {
            let mut last = None;
            for i in host_order(&config) {
                match self.connect_to(&config, i).await {
                    Ok(connected) => return Ok(connected),
                    Err(e) => last = Some(e),
                }
            }
            Err(match last {
                Some(e) => e,
                None => failed(no_host()).await,
            })
        })
    }
}

/// The URL's hosts by index, in the order to try them.
fn host_order(config: &Config) -> Vec<usize> {
    let count = config.get_hosts().len().max(config.get_hostaddrs().len());
    let mut order: Vec<usize> = (0..count).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random && count > 1 {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_ok() {
            let at = (u64::from_le_bytes(seed) % count as u64) as usize;
            order.rotate_left(at);
        }
    }
    order
}

fn no_host() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "the URL names no host")
}

/// The connection's task: it ends with the connection, waking `notify`
/// at each notification.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notify: Option<tokio::sync::mpsc::Sender<()>>,
) -> tokio::task::JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if let Some(notify) = &notify {
                        let _ = notify.try_send(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(target: "bulkhead::sql", error = %e, "a PostgreSQL connection ended");
                    return;
                }
                None => return,
            }
        }
    })
}

/// Stop the statement running on `token`'s connection, over a socket of
/// our own (the driver only knows the host of connections it made). The
/// request goes to every host of the URL at once (second outside review:
/// one after the other, a host that never answered used up the time and
/// the cancel never reached the session's): only the one whose session
/// holds the token's secret key acts on it. Ok once the first host took
/// the request (sent, not proof that anything stopped: a host that only
/// accepts TCP takes it too); the others go on by themselves, each within
/// its connect timeout and a second (third outside review: waiting for
/// every host, a silent one made each cancel look failed).
pub(crate) async fn cancel(
    token: &CancelToken,
    config: &Config,
    tls: Option<&MakeRustlsConnect>,
) -> Result<(), Error> {
    let order = host_order(config);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel(order.len().max(1));
    let bound = per_host_timeout(config) + std::time::Duration::from_secs(1);
    for i in order {
        let (token, config, tls) = (token.clone(), config.clone(), tls.cloned());
        let sent_tx = sent_tx.clone();
        tokio::spawn(async move {
            let send = async {
                let (socket, host) = open_socket(&config, i).await?;
                match tls {
                    Some(make) => {
                        token
                            .cancel_query_raw(socket, rustls_for(make, &host).await?)
                            .await
                    }
                    None => token.cancel_query_raw(socket, NoTls).await,
                }
            };
            let sent = match tokio::time::timeout(bound, send).await {
                Ok(sent) => sent,
                Err(_) => Err(failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the host did not take the cancel in time",
                ))
                .await),
            };
            let _ = sent_tx.send(sent).await;
        });
    }
    drop(sent_tx);
    let mut last = None;
    while let Some(sent) = sent_rx.recv().await {
        match sent {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e,
        None => failed(no_host()).await,
    })
}

/// How long one host of `config` has, from the socket to the login: the
/// URL's connect timeout, or the node's default.
pub(crate) fn per_host_timeout(config: &Config) -> std::time::Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(crate::pg::CONNECT_TIMEOUT)
}

async fn rustls_for(mut make: MakeRustlsConnect, host: &str) -> Result<RustlsConnect, Error> {
    match MakeTlsConnect::<Socket>::make_tls_connect(&mut make, host) {
        Ok(tls) => Ok(tls),
        Err(_) => Err(failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the database host is not a name TLS can verify",
        ))
        .await),
    }
}

/// TLS as the store's connection asks, its plaintext side bounded.
struct BoundedTls {
    tls: RustlsConnect,
    connect: BoundedConnect,
}

impl TlsConnect<Socket> for BoundedTls {
    type Stream = Bounded<RustlsStream<Socket>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Stream>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = TlsConnect::<Socket>::connect(self.tls, stream).await?;
            Ok(self.connect.bound(stream, false))
        })
    }
}

/// A socket to `config`'s `i`th host, set up as the driver sets up its
/// own (keepalives, TCP user timeout), with the host's name (for TLS);
/// the caller bounds the time ([`per_host_timeout`]).
async fn open_socket(config: &Config, i: usize) -> Result<(Socket, String), Error> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let attempt = async {
        // `hostaddr` is where to connect; `host`, the name TLS checks.
        let tcp = |name: String| async move {
            let stream = match addrs.get(i) {
                Some(ip) => TcpStream::connect((*ip, port)).await?,
                None => TcpStream::connect((name.as_str(), port)).await?,
            };
            stream.set_nodelay(true)?;
            let socket = socket2::SockRef::from(&stream);
            if config.get_keepalives() {
                let mut keepalive =
                    socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                if let Some(interval) = config.get_keepalives_interval() {
                    keepalive = keepalive.with_interval(interval);
                }
                if let Some(retries) = config.get_keepalives_retries() {
                    keepalive = keepalive.with_retries(retries);
                }
                socket.set_tcp_keepalive(&keepalive)?;
            }
            #[cfg(target_os = "linux")]
            if let Some(timeout) = config.get_tcp_user_timeout() {
                socket.set_tcp_user_timeout(Some(*timeout))?;
            }
            Ok::<_, io::Error>((Socket::Tcp(stream), name))
        };
        match hosts.get(i) {
            Some(Host::Tcp(name)) => tcp(name.clone()).await,
            #[cfg(unix)]
            Some(Host::Unix(dir)) => {
                let stream = UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?;
                Ok((Socket::Unix(stream), String::new()))
            }
            None => match addrs.get(i) {
                Some(ip) => tcp(ip.to_string()).await,
                None => Err(no_host()),
            },
        }
    };
    // Bounded by the caller: a session's start, or a cancel's send.
    match attempt.await {
        Ok(opened) => Ok(opened),
        Err(e) => Err(failed(e).await),
    }
}

/// `e` as the driver's error (it has no public constructor): the driver
/// reports it, failing to start up on a stream that fails with it.
async fn failed(e: io::Error) -> Error {
    struct Failing(Option<io::Error>);
    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(self
                .0
                .take()
                .unwrap_or_else(|| io::ErrorKind::Other.into())))
        }
    }
    impl AsyncWrite for Failing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(self
                .0
                .take()
                .unwrap_or_else(|| io::ErrorKind::Other.into())))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
    match Config::new()
        .user("bulkhead")
        .connect_raw(Failing(Some(e)), NoTls)
        .await
    {
        Err(e) => e,
        // Cannot start up on a stream that fails: never reached.
        Ok(_) => Error::__private_api_timeout(),
    }
}

/// A TCP or Unix-domain socket to the database.
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

macro_rules! on_socket {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Socket::Tcp($s) => $e,
            #[cfg(unix)]
            Socket::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_socket!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_socket!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A stream whose messages are counted as they are read (T05).
pub(crate) struct Bounded<S> {
    stream: S,
    framing: Framing,
    max_message: u32,
    counts: Arc<MessageCounts>,
    role: Arc<str>,
}

/// Where the reader is in PostgreSQL's framing: a message is a type byte,
/// a 4-byte big-endian length that counts itself, then its body.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    header_read: usize,
    body_left: u64,
    /// Without TLS: the server may not ask for the password itself.
    plaintext: bool,
    /// An authentication request's code, as its bytes arrive.
    auth_code: Option<([u8; 4], usize)>,
}

/// Why [`Framing::follow`] ends a connection.
#[derive(Debug, PartialEq)]
enum Refused {
    /// A message of this length, over the bound.
    Over(u32),
    /// Without TLS, the server asked for the password in clear or as MD5
    /// (a host of the URL that is not the database, or a path that can
    /// be read, would get it: fifth outside review).
    PasswordInClear,
}

/// PostgreSQL's authentication requests that send the password itself
/// (cleartext) or its password-equivalent hash (MD5).
const PASSWORD_REQUESTS: [u32; 2] = [3, 5];

impl Framing {
    fn new(plaintext: bool) -> Self {
        Self {
            plaintext,
            ..Self::default()
        }
    }

    /// Follow `bytes`: whether a message over [`LARGE_MESSAGE`] began in
    /// them, or why the connection must end.
    fn follow(&mut self, mut bytes: &[u8], max: u32) -> Result<bool, Refused> {
        let mut large = false;
        while !bytes.is_empty() {
            if let Some((code, read)) = &mut self.auth_code
                && self.body_left > 0
            {
                code[*read] = bytes[0];
                *read += 1;
                self.body_left -= 1;
                bytes = &bytes[1..];
                if *read == code.len() {
                    let asked = u32::from_be_bytes(*code);
                    self.auth_code = None;
                    if self.plaintext && PASSWORD_REQUESTS.contains(&asked) {
                        return Err(Refused::PasswordInClear);
                    }
                }
                continue;
            }
            if self.body_left > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.body_left).unwrap_or(usize::MAX));
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.header_read] = bytes[0];
            self.header_read += 1;
            bytes = &bytes[1..];
            if self.header_read == self.header.len() {
                self.header_read = 0;
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                if length > max.saturating_add(4) {
                    return Err(Refused::Over(length));
                }
                large |= length > LARGE_MESSAGE;
                // Under 4 the driver itself refuses the message.
                self.body_left = u64::from(length.saturating_sub(4));
                if self.header[0] == b'R' && length >= 8 {
                    self.auth_code = Some(([0; 4], 0));
                }
            }
        }
        Ok(large)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            match this
                .framing
                .follow(&buf.filled()[before..], this.max_message)
            {
                Ok(false) => {}
                Ok(true) => {
                    this.counts.large.fetch_add(1, Ordering::Relaxed);
                }
                Err(Refused::PasswordInClear) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "the server asked for the password in clear or as MD5 over a connection without TLS; refused: use scram-sha-256 in its pg_hba.conf, or TLS (sslmode=verify-full)",
                    )));
                }
                Err(Refused::Over(length)) => {
                    this.counts.over.fetch_add(1, Ordering::Relaxed);
                    // The call's own refusal is logged, attributed, by the
                    // runtime; this one only says which connection.
                    tracing::debug!(target: "bulkhead::sql", role = %this.role, bytes = length, bound = this.max_message, "a SQL store's statement answered with a message over the bound; its connection is closed (T05)");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a message from the database over the bound",
                    )));
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl<S: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Bounded<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.stream.channel_binding()
    }
}

/// For tests: the port of a host that takes every connection and never
/// answers (up to 16, held two minutes).
#[cfg(test)]
pub(crate) fn silent_host() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(16).collect();
        std::thread::sleep(std::time::Duration::from_secs(120));
        drop(held);
    });
    port
}

#[cfg(test)]
mod tests {
    use super::{Framing, silent_host};

    fn message(tag: u8, body: usize) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body as u32 + 4).to_be_bytes());
        m.extend(std::iter::repeat_n(0u8, body));
        m
    }

    #[test]
    fn messages_under_the_bound_pass_in_any_split() {
        let mut stream = message(b'T', 10);
        stream.extend(message(b'D', 100));
        stream.extend(message(b'C', 0));
        for split in 1..stream.len() {
            let mut framing = Framing::default();
            for chunk in stream.chunks(split) {
                assert_eq!(framing.follow(chunk, 100), Ok(false));
            }
            assert_eq!((framing.header_read, framing.body_left), (0, 0));
        }
    }

    #[test]
    fn a_message_over_the_bound_is_caught_from_its_header_t05() {
        let mut stream = message(b'T', 10);
        stream.extend(&message(b'D', 101)[..5]);
        for split in 1..stream.len() {
            let mut framing = Framing::default();
            let caught = stream
                .chunks(split)
                .map(|chunk| framing.follow(chunk, 100))
                .find(Result::is_err);
            assert_eq!(
                caught,
                Some(Err(super::Refused::Over(105))),
                "split {split}"
            );
        }
    }

    /// Third outside review (T05): a cancel waited for every host of the
    /// URL, so one that took the connection and never answered made each
    /// cancel look failed. With such a host first, the cancel reaches the
    /// server's session and says so. The outer bound only detects a hang.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_cancel_is_done_at_the_host_that_takes_it_t05() {
        use deadpool_postgres::Connect as _;
        let port = silent_host();
        let config: tokio_postgres::Config = format!(
            "postgres://postgres@127.0.0.1:{port},127.0.0.1:5432/postgres?connect_timeout=1"
        )
        .parse()
        .unwrap();
        let connect = super::BoundedConnect::node(None, &config);
        let (client, _task) = connect.connect(&config).await.unwrap();
        let token = client.cancel_token();
        let sleeping = tokio::spawn(async move {
            let outcome = client.simple_query("SELECT pg_sleep(60)").await;
            (outcome, client)
        });
        let bound = std::time::Duration::from_secs(30);
        // The statement must be running before it can be cancelled.
        let (watcher, watching) =
            tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", super::NoTls)
                .await
                .unwrap();
        tokio::spawn(watching);
        let started = std::time::Instant::now();
        while watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            assert!(started.elapsed() < bound, "the statement never started");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(matches!(
            tokio::time::timeout(bound, super::cancel(&token, &config, None)).await,
            Ok(Ok(()))
        ));
        let (outcome, _client) = tokio::time::timeout(bound, sleeping)
            .await
            .unwrap()
            .unwrap();
        let e = outcome.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        );
    }

    /// Fifth outside review (T15): without TLS, a host of the URL that
    /// asked for the password in clear (or as MD5) got it. Now the
    /// request ends the connection before the driver answers it: the
    /// fake host gets no password, for either kind.
    #[tokio::test(flavor = "multi_thread")]
    async fn no_password_in_clear_without_tls_t15() {
        use deadpool_postgres::Connect as _;
        use std::io::{Read as _, Write as _};
        for request in [
            vec![b'R', 0, 0, 0, 8, 0, 0, 0, 3],
            vec![b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4],
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let fake = std::thread::spawn(move || {
                let (mut peer, _) = listener.accept().unwrap();
                peer.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                    .unwrap();
                let mut startup = [0u8; 512];
                let _ = peer.read(&mut startup);
                peer.write_all(&request).unwrap();
                let mut heard = Vec::new();
                let _ = peer.read_to_end(&mut heard);
                heard
            });
            let config: tokio_postgres::Config = format!(
                "postgres://postgres:hunter2secret@127.0.0.1:{port}/postgres?connect_timeout=5"
            )
            .parse()
            .unwrap();
            let Err(refused) = super::BoundedConnect::node(None, &config)
                .connect(&config)
                .await
            else {
                panic!("a session with a host that asks for the password in clear");
            };
            assert!(format!("{refused:?}").contains("in clear"), "{refused:?}");
            let heard = fake.join().unwrap();
            assert!(
                !heard.windows(8).any(|w| w == b"hunter2s") && !heard.contains(&b'p'),
                "the fake host heard {heard:?}"
            );
        }
    }

    #[test]
    fn a_large_message_under_the_bound_is_told_t05() {
        let large = super::LARGE_MESSAGE as usize;
        let mut stream = message(b'D', large - 4);
        stream.extend(message(b'D', large - 3));
        let mut framing = Framing::new(true);
        assert_eq!(framing.follow(&stream[..large + 1], 8 << 20), Ok(false));
        assert_eq!(framing.follow(&stream[large + 1..], 8 << 20), Ok(true));
    }
}
