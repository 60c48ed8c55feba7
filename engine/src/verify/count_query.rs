//! The count gate's threshold from the source of truth: one SQL query, run read-only against
//! the product database, answering how many items the collection must hold. A scheduled
//! rebuild so checks each day's collection against that day's database, not against a number
//! fixed in YAML.
//!
//! What keeps the query from writing, in order: it must be a `SELECT` or `WITH` without a
//! locking or `INTO` clause ([`CountQuery::new`]); it is prepared first and refused unless it
//! answers exactly one column, before anything runs (DDL, `CALL`, `COPY`, `SET` answer none,
//! and a prepared statement is one statement: `; DROP ...` cannot ride along); it runs inside
//! `START TRANSACTION READ ONLY` (PostgreSQL, MySQL 5.6.5+, MariaDB 10.0+), which is rolled
//! back. The boundary that holds against everything (a function with side effects, dblink) is
//! a database user that may only SELECT: the documentation says so.
//!
//! A database that cannot be reached, a query that fails or answers something else is an
//! [`Unanswered`] reason: the gate fails with it, never passes, and the process exits 3 (try
//! again), not 1 (a verdict).

use crate::error::{Error, Result, redact};
use futures::TryStreamExt;
use sqlx::AnyConnection;
use sqlx::any::AnyConnectOptions;
use sqlx::{Column, ConnectOptions, Connection, Executor, Row, Statement, TypeInfo};
use std::str::FromStr;
use std::time::Duration;

/// How long one connection attempt may take; a database that does not answer within it, or
/// answers that it is starting, shutting down or full, is tried again after 1, 2, 4, 8 and 16 s
/// ([`CONNECT_ATTEMPTS`] in all: about a minute, a failover's length).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_ATTEMPTS: u32 = 6;
/// How long the query may run. The server is told too (PostgreSQL `statement_timeout`, MySQL
/// `max_execution_time`, MariaDB `max_statement_time`), so it stops the query itself rather
/// than only noticing the closed connection.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Clauses that would lock rows of the product database or write a file.
const REFUSED_CLAUSES: [&str; 7] = [
    "FOR UPDATE",
    "FOR NO KEY UPDATE",
    "FOR SHARE",
    "FOR KEY SHARE",
    "LOCK IN SHARE MODE",
    "INTO OUTFILE",
    "INTO DUMPFILE",
];
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
    connect_attempts: u32,
}

impl std::fmt::Debug for CountQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Why the query gave no count; the gate fails with this.
#[derive(Debug, Clone, PartialEq)]
pub struct Unanswered {
    /// The query and its database, as [`CountQuery::describe`] names them.
    pub from: String,
    pub reason: String,
    /// The database did not answer (in time): asking again may succeed. A query that failed or
    /// answered something else will do so again.
    pub retry: bool,
}

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
            // A libpq-style "host=... password=..." has no scheme: not shown at all.
            let shown = if scheme.is_some() { redact(database_url) } else { "(not a URL; not shown)".into() };
            return Err(usage(
                "--source-database-url",
                shown,
                "must be a postgres://, postgresql://, mysql:// or mariadb:// URL",
            ));
        }
        let statement = without_leading_comments(sql).to_ascii_uppercase();
        let first_word: String = statement.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        if first_word != "SELECT" && first_word != "WITH" {
            return Err(usage(
                "--expected-count-query",
                quoted(sql),
                "must be a SELECT (or WITH ... SELECT) answering one count",
            ));
        }
        let words = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(clause) = REFUSED_CLAUSES.iter().find(|c| words.contains(*c)) {
            return Err(usage(
                "--expected-count-query",
                quoted(sql),
                &format!("{clause} would lock rows or write a file; a count only reads"),
            ));
        }
        Ok(CountQuery {
            sql: sql.trim().to_string(),
            database_url: database_url.to_string(),
            connect_attempts: CONNECT_ATTEMPTS,
        })
    }

    /// Tries to connect this often in all (at least once) instead of [`CONNECT_ATTEMPTS`].
    pub fn with_connect_attempts(self, attempts: u32) -> CountQuery {
        CountQuery { connect_attempts: attempts.max(1), ..self }
    }

    /// The query and the database without credentials, as the report names them.
    pub fn describe(&self) -> String {
        format!("`{}` on {}", quoted(&self.sql), redact(&self.database_url))
    }

    fn unanswered(&self, reason: String) -> Unanswered {
        Unanswered { from: self.describe(), reason, retry: false }
    }

    fn not_reached(&self, reason: String) -> Unanswered {
        Unanswered { retry: true, ..self.unanswered(reason) }
    }

    /// Runs the query on its own small runtime (callers are plain threads: the CLI, a job).
    pub fn answer(&self) -> std::result::Result<u64, Unanswered> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.unanswered(format!("could not start the async runtime: {e}")))?;
        let answer = runtime.block_on(self.answer_async());
        // A name lookup still blocking in a thread is not waited for.
        runtime.shutdown_background();
        answer
    }

    async fn answer_async(&self) -> std::result::Result<u64, Unanswered> {
        let database = redact(&self.database_url);
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(&self.database_url)
            // sqlx's message names the part of the URL it could not read, not its value.
            .map_err(|e| self.unanswered(format!("{database} is not a database URL sqlx reads: {e}")))?
            .disable_statement_logging();
        let connected = connect(&options, &database, self.connect_attempts).await;
        let mut connection = connected.map_err(|reason| self.not_reached(reason))?;
        let answer = tokio::time::timeout(QUERY_TIMEOUT, self.run(&mut connection)).await;
        // The transaction is only read from; closing the connection ends it either way.
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, connection.close()).await;
        match answer {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(reason)) => Err(self.unanswered(reason)),
            Err(_) => Err(self.not_reached(format!("no answer within {} s", QUERY_TIMEOUT.as_secs()))),
        }
    }

    async fn run(&self, connection: &mut AnyConnection) -> std::result::Result<u64, String> {
        let fail = |e: sqlx::Error| {
            let e = e.to_string();
            // sqlx's Any driver reads integers, floats, text and booleans; a DECIMAL (SUM) is not.
            if e.contains("Any driver does not support") {
                format!("{e}; cast the count, e.g. CAST(... AS BIGINT)")
            } else {
                e
            }
        };
        let postgres = connection.backend_name().eq_ignore_ascii_case("postgresql");
        if !postgres {
            // MySQL knows max_execution_time, MariaDB max_statement_time: each refuses the other.
            let ms = QUERY_TIMEOUT.as_millis();
            for setting in [
                format!("SET SESSION max_execution_time = {ms}"),
                format!("SET SESSION max_statement_time = {}", QUERY_TIMEOUT.as_secs()),
                "SET SESSION innodb_lock_wait_timeout = 10".to_string(),
            ] {
                let _ = sqlx::raw_sql(&setting).execute(&mut *connection).await;
            }
        }
        sqlx::raw_sql("START TRANSACTION READ ONLY").execute(&mut *connection).await.map_err(fail)?;
        if postgres {
            // LOCAL: it ends with the transaction (a pooler's next client never sees it).
            let ms = QUERY_TIMEOUT.as_millis();
            sqlx::raw_sql(&format!("SET LOCAL statement_timeout = {ms}"))
                .execute(&mut *connection)
                .await
                .map_err(fail)?;
        }
        // Prepared, not run: a statement that answers no column (DDL, CALL, COPY, SET) or several
        // is refused before it does anything.
        let statement = connection.prepare(&self.sql).await.map_err(fail)?;
        if statement.columns().len() != 1 {
            return Err(format!("the query answers {} columns; it must answer one count", statement.columns().len()));
        }
        let count = {
            let mut rows = statement.query().fetch(&mut *connection);
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

/// `sql` as messages quote it: its first [`QUOTED_CHARS`] characters (a verify Job's report is
/// its termination message, which Kubernetes cuts at 4096 bytes).
fn quoted(sql: &str) -> String {
    let sql = sql.trim();
    let mut shown: String = sql.chars().take(QUOTED_CHARS).collect();
    if shown.len() < sql.len() {
        shown.push_str("...");
    }
    shown
}

/// `sql` after its leading blanks, `-- ...` lines, `/* ... */` comments and opening parentheses.
fn without_leading_comments(sql: &str) -> &str {
    let mut rest = sql;
    loop {
        let trimmed = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        rest = if let Some(line) = trimmed.strip_prefix("--") {
            line.split_once('\n').map_or("", |(_, after)| after)
        } else if let Some(block) = trimmed.strip_prefix("/*") {
            block.split_once("*/").map_or("", |(_, after)| after)
        } else {
            return trimmed;
        };
    }
}

/// Connects, trying again when the database cannot be reached or says it is starting,
/// shutting down or full (a restart, a failover); the reason when it never answers.
async fn connect(
    options: &AnyConnectOptions,
    database: &str,
    attempts: u32,
) -> std::result::Result<AnyConnection, String> {
    let mut attempt = 1;
    loop {
        let reason = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(sqlx::Error::Database(e))) if e.code().is_some_and(|code| transient(&code)) => e.to_string(),
            // Refused credentials or an unknown database do not get better by trying again.
            Ok(Err(e @ (sqlx::Error::Database(_) | sqlx::Error::Configuration(_) | sqlx::Error::Tls(_)))) => {
                return Err(format!("could not connect to {database}: {e}"));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        };
        if attempt >= attempts {
            return Err(format!("could not connect to {database} ({attempts} attempts): {reason}"));
        }
        tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        attempt += 1;
    }
}

/// SQLSTATEs of a database that may answer later: connection exceptions (class 08, also
/// MySQL's "too many connections" 08004 and lost connection 08S01), PostgreSQL's admin
/// shutdown, crash shutdown, cannot connect now (starting up) and too many connections.
fn transient(code: &str) -> bool {
    code.starts_with("08") || ["57P01", "57P02", "57P03", "53300"].contains(&code)
}

/// The one integer of `row`: any integer width; NULL, a negative or another type is refused.
fn count_of(row: &sqlx::any::AnyRow) -> std::result::Result<u64, String> {
    if row.columns().len() != 1 {
        return Err(format!("the query answered {} columns; it must answer one count", row.columns().len()));
    }
    // The Any driver reads every integer width as i64.
    let value: Option<i64> = row.try_get::<Option<i64>, _>(0).map_err(|_| {
        let column = &row.columns()[0];
        format!(
            "the query answered a {} (column {}), not an integer; cast it, e.g. CAST(... AS BIGINT) or CAST(... AS SIGNED)",
            column.type_info().name(),
            column.name()
        )
    })?;
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
        let e = CountQuery::new("SELECT 1", "host=db user=r password=s3cret").unwrap_err().to_string();
        assert!(e.contains("(not a URL; not shown)") && !e.contains("s3cret"), "{e}");
        // Only a SELECT (comments before it are fine), and no locking or file clause.
        CountQuery::new("-- the day's items\n/* live */ (SELECT count(*) FROM items)", "mysql://db/shop").unwrap();
        CountQuery::new("WITH a AS (SELECT 1) SELECT count(*) FROM a", "mysql://db/shop").unwrap();
        for (sql, says) in [
            ("TRUNCATE TABLE items", "must be a SELECT"),
            ("-- x\nDELETE FROM items", "must be a SELECT"),
            ("CALL count_items()", "must be a SELECT"),
            ("SELECT count(*) FROM items FOR\n  UPDATE", "FOR UPDATE"),
            ("SELECT count(*) FROM items INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ] {
            let e = CountQuery::new(sql, "mysql://db/shop").unwrap_err().to_string();
            assert!(e.contains("--expected-count-query") && e.contains(says), "{sql}: {e}");
        }
        let long = format!("SELECT count(*) FROM items WHERE {}", "x = 1 AND ".repeat(50));
        assert!(CountQuery::new(&long, "mysql://db/shop").unwrap().describe().contains("...` on mysql://db/shop"));
    }

    #[test]
    fn a_database_that_is_not_there_is_an_answer_of_no_count() {
        // Port 9 on loopback (discard) has no listener here: connection refused, twice.
        let q = CountQuery::new("SELECT count(*) FROM items", "postgres://u:s3cret@127.0.0.1:9/shop").unwrap();
        let q = q.with_connect_attempts(2);
        let Unanswered { from, reason, retry } = q.answer().unwrap_err();
        assert!(retry, "a database that is not there may be there later");
        assert_eq!(from, "`SELECT count(*) FROM items` on postgres://127.0.0.1:9/shop");
        assert!(reason.contains("could not connect to postgres://127.0.0.1:9/shop"), "{reason}");
        assert!(!reason.contains("s3cret"), "{reason}");
    }
}
