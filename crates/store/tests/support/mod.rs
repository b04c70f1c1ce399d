//! What the store's integration tests share: a PostgreSQL database of
//! their own (issue 16). Not every test uses every part.
#![allow(dead_code)]

use bulkhead_store::kv;
use bulkhead_store::{State, StateConfig};

/// A database of its own on the local PostgreSQL (127.0.0.1:5432, user
/// `postgres`, trust), dropped with its call role at the end, so tests run
/// in parallel.
pub struct PgDatabase {
    pub name: String,
    pub schema: String,
    pub admin: tokio::runtime::Runtime,
}

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

impl PgDatabase {
    pub fn create() -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let admin = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let db = Self {
            name: format!("bh_test_{suffix}"),
            schema: format!("bh_{suffix}"),
            admin,
        };
        db.on("postgres", &format!("CREATE DATABASE {}", db.name));
        db
    }

    pub fn url(&self) -> String {
        format!("{PG_SERVER}/{}", self.name)
    }

    pub fn config(&self) -> kv::PgConfig {
        kv::PgConfig {
            url: self.url().into(),
            schema: self.schema.clone(),
        }
    }

    /// A connection to this database as `postgres`, for the test to query.
    pub fn client(&self) -> tokio_postgres::Client {
        let url = self.url();
        self.admin.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
        })
    }

    /// The state of one node: its own state directory, this database.
    pub fn node(&self, dir: &std::path::Path) -> State {
        State::open(&StateConfig::Postgres {
            dir: dir.to_path_buf(),
            postgres: self.config(),
        })
        .unwrap()
    }

    /// Run `sql` (simple protocol) on `database` as `postgres`; the rows
    /// of its last statement, as text.
    pub fn on(&self, database: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let sql = sql.to_string();
        let url = format!("{PG_SERVER}/{database}");
        self.admin.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("the local PostgreSQL at 127.0.0.1:5432 (issue 16)");
            let driver = tokio::spawn(connection);
            let messages = client.simple_query(&sql).await.unwrap();
            drop(client);
            let _ = driver.await;
            messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.on(&self.name.clone(), sql)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Two batches: DROP DATABASE runs in no transaction block.
        self.on(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        self.on(
            "postgres",
            &format!("DROP ROLE IF EXISTS {}_kv_call", self.schema),
        );
        // The SQL stores' roles (cluster-wide, named after the database).
        self.on(
            "postgres",
            &bulkhead_store::sql::postgres::drop_roles_statement(&self.name),
        );
    }
}
