//! Deploys fan out (issue 16, T19): a version activated on one node is
//! published in the app environment's schema (table `deploys`, the bundle
//! itself) and announced with `NOTIFY`; every node `LISTEN`s and installs
//! it through its own verification, as if it had been sent to its admin
//! listener. PostgreSQL rather than NATS: the nodes already depend on it,
//! the row and the notification commit together (a deploy announced is a
//! deploy stored), and a node that was away, or starts later, catches up
//! by reading the table, which a notification alone could not give it.
//! Notifications only wake the listener early: it also reads the table
//! every [`POLL_EVERY`], so a lost notification (a dropped connection)
//! delays a deploy, never loses it.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::pg::{Pg, PgError};

/// How often a node reads the table without being woken.
pub const POLL_EVERY: Duration = Duration::from_secs(5);
/// Bundles kept in the table (the newest matter; older ones are history).
const KEEP: i64 = 5;
/// The largest bundle a node takes from the table: what its admin
/// listener takes (a row written past it by hand is not loaded, T01).
pub const MAX_ARCHIVE_BYTES: i32 = 64 << 20;

/// A version one node activated, as the others receive it.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: i64,
    /// `deploy` or `rollback`.
    pub kind: String,
    /// The node that activated it.
    pub origin: String,
    /// A digest of the version's files (path → SHA-256): what a node
    /// compares with the version it serves.
    pub files: String,
    pub archive: Vec<u8>,
}

/// The `deploys` table and its notification channel.
pub struct DeployChannel {
    pg: Arc<Pg>,
}

impl DeployChannel {
    /// Create the table if missing.
    pub fn open(pg: Arc<Pg>) -> Result<Self, PgError> {
        let schema = pg.schema().to_string();
        pg.call(move |pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            client
                .batch_execute(&format!(
                    "{preamble}
                     CREATE TABLE IF NOT EXISTS {schema}.deploys (
                         seq BIGSERIAL PRIMARY KEY,
                         kind TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
                         origin TEXT NOT NULL,
                         files TEXT NOT NULL,
                         archive BYTEA NOT NULL,
                         created_ms BIGINT NOT NULL
                     );",
                    preamble = crate::pg::migration_preamble(),
                ))
                .await
                .map_err(PgError::of)
        })?;
        Ok(Self { pg })
    }

    fn channel(&self) -> String {
        format!("{}_deploys", self.pg.schema())
    }

    /// Store a version and announce it, in one transaction; the older
    /// bundles past the newest [`KEEP`] are deleted. Its sequence number.
    pub fn publish(
        &self,
        kind: &str,
        origin: &str,
        files: &str,
        archive: Vec<u8>,
    ) -> Result<i64, PgError> {
        let schema = self.pg.schema().to_string();
        let channel = self.channel();
        let (kind, origin, files) = (kind.to_string(), origin.to_string(), files.to_string());
        self.pg.call(move |pool| async move {
            let mut client = pool.get().await.map_err(PgError::of)?;
            let tx = client.transaction().await.map_err(PgError::of)?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO {schema}.deploys (kind, origin, files, archive, created_ms)
                         VALUES ($1, $2, $3, $4, $5) RETURNING seq"
                    ),
                    &[&kind, &origin, &files, &archive, &crate::now_ms()],
                )
                .await
                .map_err(PgError::of)?;
            let seq: i64 = row.try_get(0).map_err(PgError::of)?;
            tx.execute(
                &format!("DELETE FROM {schema}.deploys WHERE seq <= $1"),
                &[&(seq - KEEP)],
            )
            .await
            .map_err(PgError::of)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&channel, &seq.to_string()])
                .await
                .map_err(PgError::of)?;
            tx.commit().await.map_err(PgError::of)?;
            Ok(seq)
        })
    }

    /// The newest version published after `seq`, if any (the ones between
    /// are skipped: only the newest is served). One over
    /// [`MAX_ARCHIVE_BYTES`] comes with an empty archive (refused by the
    /// node as a bundle it cannot read), never loaded.
    pub fn newest_after(&self, seq: i64) -> Result<Option<Published>, PgError> {
        let schema = self.pg.schema().to_string();
        self.pg.call(move |pool| async move {
            let rows = crate::pg::query(
                &pool,
                &format!(
                    "SELECT seq, kind, left(origin, 64), left(files, 128),
                            CASE WHEN octet_length(archive) <= $2 THEN archive ELSE ''::BYTEA END
                     FROM {schema}.deploys
                     WHERE seq > $1 ORDER BY seq DESC LIMIT 1"
                ),
                &[&seq, &MAX_ARCHIVE_BYTES],
            )
            .await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            Ok(Some(Published {
                seq: crate::pg::column(row, 0)?,
                kind: crate::pg::column(row, 1)?,
                origin: crate::pg::column(row, 2)?,
                files: crate::pg::column(row, 3)?,
                archive: crate::pg::column(row, 4)?,
            }))
        })
    }

    /// Call `on_wake` whenever a version may have been published: at each
    /// notification on the channel, and every [`POLL_EVERY`] regardless,
    /// from a thread of its own, until `on_wake` returns false. The
    /// listening connection is made again whenever it drops.
    pub fn listen(self: Arc<Self>, on_wake: impl FnMut() -> bool + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("bulkhead-deploys".into())
            .spawn(move || self.listen_here(on_wake));
        if let Err(e) = spawned {
            warn!(target: "bulkhead::deploy", error = %e, "cannot listen for deploys from other nodes");
        }
    }

    fn listen_here(&self, mut on_wake: impl FnMut() -> bool) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            warn!(target: "bulkhead::deploy", "cannot listen for deploys from other nodes: no runtime");
            return;
        };
        let (config, tls) = self.pg.config();
        let (config, tls) = (config.clone(), tls.cloned());
        let listen = format!("LISTEN {}", self.channel());
        let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel::<()>(1);
        // The listening client (kept: dropping it closes the connection)
        // and the task driving its connection.
        let mut connected: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
        loop {
            if connected.as_ref().is_none_or(|(_, c)| c.is_finished()) {
                connected = runtime
                    .block_on(connect_listener(&config, tls.as_ref(), &listen, wake_tx.clone()))
                    .map_err(|e| warn!(target: "bulkhead::deploy", error = %e, "cannot listen for deploys from other nodes; reading the table every few seconds instead"))
                    .ok();
            }
            // Woken by a notification or the poll's tick, whichever first.
            runtime.block_on(async {
                let _ = tokio::time::timeout(POLL_EVERY, wake_rx.recv()).await;
            });
            if !on_wake() {
                return;
            }
        }
    }
}

/// A connection of its own that `LISTEN`s, driven by the returned task,
/// which ends when the connection drops. Connected as the pools are
/// (`pg_bound`): each host of the URL in turn, each within the connect
/// timeout from the socket to the login (third and fourth outside
/// reviews: the driver's own connect bounds only the socket, so a host
/// that took the connection and never answered held this thread, and the
/// table's polling with it, and the next host was never tried).
async fn connect_listener(
    config: &tokio_postgres::Config,
    tls: Option<&crate::pg_tls::MakeRustlsConnect>,
    listen: &str,
    wake: tokio::sync::mpsc::Sender<()>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), PgError> {
    use deadpool_postgres::Connect as _;
    let connect = crate::pg_bound::BoundedConnect {
        notify: Some(wake),
        ..crate::pg_bound::BoundedConnect::node(tls.cloned(), config)
    };
    let listening = async {
        let (client, driver) = connect.connect(config).await.map_err(PgError::of)?;
        client.batch_execute(listen).await.map_err(PgError::of)?;
        Ok((client, driver))
    };
    tokio::time::timeout(crate::pg::create_timeout(config), listening)
        .await
        .map_err(|_| {
            PgError("no host of the URL started a session within its connect timeout".into())
        })?
}

#[cfg(test)]
mod tests {
    /// Third and fourth outside reviews (T01): a first host that takes
    /// the connection and never answers held the deploy listener, and the
    /// table's polling with it, and the next host was never tried. Now it
    /// is passed over within its connect timeout (1 s) and the listener
    /// listens on the server behind it; with only silent hosts it gives
    /// up. The outer bound only detects a hang.
    #[tokio::test]
    async fn a_silent_host_does_not_hold_the_deploy_listener_t01() {
        let port = crate::pg_bound::silent_host();
        let bound = std::time::Duration::from_secs(60);
        let listen = |hosts: String| async move {
            let config: tokio_postgres::Config =
                format!("postgres://postgres@{hosts}/postgres?connect_timeout=1")
                    .parse()
                    .unwrap();
            let (wake, _woken) = tokio::sync::mpsc::channel(1);
            tokio::time::timeout(
                bound,
                super::connect_listener(&config, None, "LISTEN x", wake),
            )
            .await
            .expect("the listener hung")
        };
        let (client, _driver) = listen(format!("127.0.0.1:{port},127.0.0.1:5432"))
            .await
            .unwrap_or_else(|e| panic!("{}", e.0));
        let listening = client
            .query_one("SELECT count(*) FROM pg_listening_channels()", &[])
            .await
            .unwrap();
        assert_eq!(listening.get::<_, i64>(0), 1);
        let Err(e) = listen(format!("127.0.0.1:{port},127.0.0.1:{port}")).await else {
            panic!("connected to a silent host");
        };
        assert!(e.0.contains("connect timeout"), "{}", e.0);
    }
}
