//! The test PostgreSQL: `OT_TEST_DATABASE_URL` (`scripts/test` starts a
//! private one), with a schema of its own for each test.

use anyhow::{Context, Result};

/// The test database's URL.
pub fn test_database_url() -> Result<String> {
    std::env::var("OT_TEST_DATABASE_URL").context(
        "OT_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts a \
         private PostgreSQL (scripts/private-postgres), or point it at a PostgreSQL server",
    )
}

/// A schema made for one test and dropped with it; servers given
/// [`PgSchema::url`] keep their tables there.
pub struct PgSchema {
    /// `--database-url` for servers using the schema.
    pub url: String,
    name: String,
}

/// Run `sql` (one or more statements) on the test database from a thread
/// of its own (it works inside and outside a runtime, and in `Drop`): the
/// first column of each row it returns, as text.
fn simple_query(sql: String) -> Result<Vec<Option<String>>> {
    let url = test_database_url()?;
    std::thread::spawn(move || -> Result<Vec<Option<String>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let (client, connection) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .with_context(|| format!("connecting to the test database {url}"))?;
            let driver = tokio::spawn(connection);
            let firsts = client
                .simple_query(&sql)
                .await?
                .iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some(row.get(0).map(str::to_owned))
                    }
                    _ => None,
                })
                .collect();
            drop(client);
            let _ = driver.await;
            Ok(firsts)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

/// Run `sql` on the test database.
fn run_sql(sql: String) -> Result<()> {
    simple_query(sql).map(|_| ())
}

/// The first column of the first row of `sql` on the test database, as an
/// integer (a count).
pub fn query_count(sql: &str) -> Result<i64> {
    let first = simple_query(sql.to_owned())?.into_iter().next().flatten();
    first
        .context("the query returned no value")?
        .parse()
        .context("the query's value is not an integer")
}

/// The CA of the test database's certificate (`scripts/test` sets
/// `OT_TEST_DATABASE_CA` when its private PostgreSQL has TLS on).
pub fn test_database_ca() -> Result<std::path::PathBuf> {
    std::env::var("OT_TEST_DATABASE_CA")
        .map(Into::into)
        .context(
            "OT_TEST_DATABASE_CA is not set: run the tests with scripts/test, whose private \
         PostgreSQL has TLS on (it needs openssl), or point it at your database's CA file",
        )
}

impl PgSchema {
    /// A new empty schema named after `test`.
    pub fn new(test: &str) -> Result<PgSchema> {
        let name = format!(
            "e2e_{}_{}_{}",
            test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            rand::random::<u32>()
        );
        run_sql(format!("CREATE SCHEMA {name}"))?;
        let base = test_database_url()?;
        let separator = if base.contains('?') { '&' } else { '?' };
        Ok(PgSchema {
            url: format!("{base}{separator}options=-c%20search_path%3D{name}"),
            name,
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = run_sql(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}
