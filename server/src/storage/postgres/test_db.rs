//! A schema of its own in the test PostgreSQL for each test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{PgOptions, PgStorage};

/// The test database: `OT_TEST_DATABASE_URL` (`scripts/test` starts a
/// private PostgreSQL and sets it).
pub(crate) fn test_database_url() -> String {
    std::env::var("OT_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "OT_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a \
             private PostgreSQL (scripts/private-postgres), or point it at a PostgreSQL server"
        )
    })
}

/// A schema made for one test, dropped with it.
pub(crate) struct TestSchema {
    /// The URL whose sessions use the schema.
    pub(crate) url: String,
    name: String,
}

/// Run `sql` on the test database (from a thread of its own, so that it
/// works inside and outside a tokio runtime).
fn run_sql(sql: String) {
    let url = test_database_url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(&sql).await.unwrap();
        });
    })
    .join()
    .unwrap();
}

impl TestSchema {
    /// A new empty schema.
    pub(crate) fn new() -> TestSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        run_sql(format!("CREATE SCHEMA {name}"));
        let base = test_database_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
        TestSchema { url, name }
    }

    /// A storage on the schema (a node), with small pools.
    pub(crate) fn open(&self) -> PgStorage {
        PgStorage::open(&PgOptions {
            url: self.url.clone(),
            commit_connections: 2,
            read_connections: 2,
            timeout: Duration::from_secs(10),
            ca_file: None,
        })
        .unwrap()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        run_sql(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}
