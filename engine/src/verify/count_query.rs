//! The count gate's threshold from the source of truth: one SQL query, run read-only against
//! the product database, answering how many items the collection must hold. A scheduled
//! rebuild so checks each day's collection against that day's database, not against a number
//! fixed in YAML.
//!
//! The query runs as a prepared statement (one statement only: `; DROP ...` cannot ride
//! along) inside `START TRANSACTION READ ONLY`, which PostgreSQL, MySQL (5.6.5+) and MariaDB
//! (10.0+) all accept, and is rolled back. Its answer must be one row with one integer column.
//! A database that cannot be reached, a query that fails or answers something else is an
//! [`Unanswered`] reason: the gate fails with it, never passes.

use crate::error::{Error, Result, redact};
use futures::TryStreamExt;
use sqlx::AnyConnection;
use sqlx::any::AnyConnectOptions;
use sqlx::{Column, ConnectOptions, Connection, Row, TypeInfo};
use std::str::FromStr;
use std::time::Duration;

/// How long one connection attempt may take; a database that does not answer within it is
/// tried again, up to [`CONNECT_ATTEMPTS`] times.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_ATTEMPTS: u32 = 3;
/// How long the query may run. PostgreSQL is also told (`statement_timeout`), so it stops the
/// query itself rather than only noticing the closed connection.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// The query as the report quotes it (a verify Job's report is its termination message,
/// which Kubernetes cuts at 4096 bytes).
const QUOTED_CHARS: usize = 200;

/// The URL schemes sqlx's drivers built in here take.
const SCHEMES: [&str; 4] = ["postgres", "postgresql", "mysql", "mariadb"];

/// `--expected-count-query` and the database it runs against.
#[derive(Clone)]
pub struct CountQuery {
    sql: String,
    /// Holds the password: never printed (see [`CountQuery::describe`]).
    database_url: String,
}

impl std::fmt::Debug for CountQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why the query gave no count; the gate fails with this.
#[derive(Debug, Clone, PartialEq)]
pub struct Unanswered(pub String);

impl CountQuery {
    /// Checks the flags' values; nothing is connected yet.
    pub fn new(sql: &str, database_url: &str) -> Result<CountQuery> {
        let usage =
            |flag: &str, value: String, reason: &str| Error::Usage { flag: flag.into(), value, reason: reason.into() };
        if sql.trim().is_empty() {
            return Err(usage(
                "--expected-count-query",
                "(empty)".into(),
                "give the SQL that counts the items, e.g. SELECT count(*) FROM items",
            ));
        }
        let scheme = database_url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !scheme.as_deref().is_some_and(|s| SCHEMES.contains(&s)) {
            return Err(usage(
                "--source-database-url",
                redact(database_url),
                "must be a postgres://, postgresql://, mysql:// or mariadb:// URL",
            ));
        }
        Ok(CountQuery { sql: sql.trim().to_string(), database_url: database_url.to_string() })
    }

    /// The query and the database without credentials, as the report names them.
    pub fn describe(&self) -> String {
        let mut sql: String = self.sql.chars().take(QUOTED_CHARS).collect();
        if sql.len() < self.sql.len() {
            sql.push_str("...");
        }
        format!("`{sql}` on {}", redact(&self.database_url))
    }

    /// Runs the query on its own small runtime (callers are plain threads: the CLI, a job).
    pub fn answer(&self) -> std::result::Result<u64, Unanswered> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Unanswered(format!("could not start the async runtime: {e}")))?;
        runtime.block_on(self.answer_async())
    }

    async fn answer_async(&self) -> std::result::Result<u64, Unanswered> {
        let database = redact(&self.database_url);
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(&self.database_url)
            // sqlx's message names the part of the URL it could not read, not its value.
            .map_err(|e| Unanswered(format!("{database} is not a database URL sqlx reads: {e}")))?
            .disable_statement_logging();
        let mut connection = connect(&options, &database).await?;
        let answer = tokio::time::timeout(QUERY_TIMEOUT, self.run(&mut connection)).await;
        // The transaction is only read from; closing the connection ends it either way.
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, connection.close()).await;
        match answer {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(reason)) => Err(Unanswered(format!("{}: {reason}", self.describe()))),
            Err(_) => Err(Unanswered(format!("{}: no answer within {} s", self.describe(), QUERY_TIMEOUT.as_secs()))),
        }
    }

    async fn run(&self, connection: &mut AnyConnection) -> std::result::Result<u64, String> {
        let fail = |e: sqlx::Error| e.to_string();
        if connection.backend_name().eq_ignore_ascii_case("postgresql") {
            let ms = QUERY_TIMEOUT.as_millis();
            sqlx::raw_sql(&format!("SET statement_timeout = {ms}")).execute(&mut *connection).await.map_err(fail)?;
        }
        sqlx::raw_sql("START TRANSACTION READ ONLY").execute(&mut *connection).await.map_err(fail)?;
        let count = {
            let mut rows = sqlx::query(&self.sql).persistent(false).fetch(&mut *connection);
            let first = rows.try_next().await.map_err(fail)?.ok_or("the query answered no row")?;
            if rows.try_next().await.map_err(fail)?.is_some() {
                return Err("the query answered more than one row; it must answer one count".into());
            }
            count_of(&first)?
        };
        sqlx::raw_sql("ROLLBACK").execute(&mut *connection).await.map_err(fail)?;
        Ok(count)
    }
}

/// Connects, trying again when the database cannot be reached (a restart, a failover).
async fn connect(options: &AnyConnectOptions, database: &str) -> std::result::Result<AnyConnection, Unanswered> {
    let mut attempt = 1;
    loop {
        let reason = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(connection)) => return Ok(connection),
            // Refused credentials or an unknown database do not get better by trying again.
            Ok(Err(e @ (sqlx::Error::Database(_) | sqlx::Error::Configuration(_) | sqlx::Error::Tls(_)))) => {
                return Err(Unanswered(format!("could not connect to {database}: {e}")));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        };
        if attempt == CONNECT_ATTEMPTS {
            return Err(Unanswered(format!("could not connect to {database} ({CONNECT_ATTEMPTS} attempts): {reason}")));
        }
        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        attempt += 1;
    }
}

/// The one integer of `row`: any integer width; NULL, a negative or another type is refused.
fn count_of(row: &sqlx::any::AnyRow) -> std::result::Result<u64, String> {
    if row.columns().len() != 1 {
        return Err(format!("the query answered {} columns; it must answer one count", row.columns().len()));
    }
    let value: Option<i64> = match row.try_get::<Option<i64>, _>(0) {
        Ok(v) => v,
        Err(_) => match row.try_get::<Option<i32>, _>(0) {
            Ok(v) => v.map(i64::from),
            Err(_) => {
                let column = &row.columns()[0];
                return Err(format!(
                    "the query answered a {} (column {}), not an integer; cast it, e.g. CAST(... AS BIGINT) or CAST(... AS SIGNED)",
                    column.type_info().name(),
                    column.name()
                ));
            }
        },
    };
    match value {
        None => Err("the query answered NULL".into()),
        Some(n) => u64::try_from(n).map_err(|_| format!("the query answered {n}, a negative count")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_are_checked_and_the_password_never_shown() {
        let q = CountQuery::new(" SELECT count(*) FROM items ", "postgres://quiver:s3cret@db:5432/shop").unwrap();
        assert_eq!(q.describe(), "`SELECT count(*) FROM items` on postgres://db:5432/shop");
        assert!(!format!("{q:?}").contains("s3cret"));
        let e = CountQuery::new("SELECT 1", "sqlite://u:s3cret@x/db").unwrap_err().to_string();
        assert!(e.contains("--source-database-url") && !e.contains("s3cret"), "{e}");
        let e = CountQuery::new("  ", "mysql://db/shop").unwrap_err().to_string();
        assert!(e.contains("--expected-count-query"), "{e}");
        let long = format!("SELECT count(*) FROM items WHERE {}", "x = 1 AND ".repeat(50));
        assert!(CountQuery::new(&long, "mysql://db/shop").unwrap().describe().contains("...` on mysql://db/shop"));
    }

    #[test]
    fn a_database_that_is_not_there_is_an_answer_of_no_count() {
        // Port 9 on loopback (discard) has no listener here: connection refused, three times.
        let q = CountQuery::new("SELECT count(*) FROM items", "postgres://u:s3cret@127.0.0.1:9/shop").unwrap();
        let Unanswered(reason) = q.answer().unwrap_err();
        assert!(reason.contains("could not connect to postgres://127.0.0.1:9/shop"), "{reason}");
        assert!(!reason.contains("s3cret"), "{reason}");
    }
}
