//! The count gate against the source of truth: a real PostgreSQL and a real MariaDB (Debian's
//! `postgresql` and `mariadb-server`, which `.ci/run` installs), each started here on a loopback
//! port with its data in a temporary directory, holding a table of items (the servers: `quiver_testkit::database`). `quiver verify` and
//! `quiver alias flip` run `--expected-count-query` against them: equal counts pass, one more
//! row fails by exactly one and the alias stays, a database that is not there fails the gate
//! with that reason, and the query cannot write.

use quiver_testkit::database::{Database, PASSWORD, mariadb, postgres};
use quiver_testkit::free_port;
use std::io::BufRead;
use std::process::{Child, Command, Output, Stdio};

fn quiver(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiver")).args(args).env("QUIVER_SOURCE_DATABASE_URL", db_url).output().unwrap()
}

/// The report's count gate.
fn count_gate(out: &Output) -> serde_json::Value {
    // `alias flip` prints the report, then the alias record.
    let first = serde_json::Deserializer::from_slice(&out.stdout).into_iter().next().expect("a report");
    let report: serde_json::Value = first.unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    report["gates"].as_array().unwrap().iter().find(|g| g["name"] == "count").expect("a count gate").clone()
}

fn no_password(out: &Output) {
    for text in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(text).contains(PASSWORD), "the password was shown");
    }
}

/// Equal counts pass and the alias flips; one more row in the database fails the gate by
/// exactly one and the alias stays; the same check from a verify Job against a serving process.
fn the_count_query_decides_the_flip(db: &Database, scheme: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let base = dir.path().join("base.npy").display().to_string();
    let ok = |out: Output| assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(quiver("", &["generate", "--out", &base, "--vectors", "300", "--dims", "8"]));
    for name in ["v1", "v2"] {
        ok(quiver("", &["import", "--data-dir", &d, "--name", name, "--source", &base]));
    }
    db.sql("CREATE TABLE items (id BIGINT PRIMARY KEY, active BOOLEAN NOT NULL)");
    let rows: Vec<String> = (0..300).map(|i| format!("({i}, TRUE)")).collect();
    db.sql(&format!("INSERT INTO items (id, active) VALUES {}", rows.join(", ")));
    let query = "SELECT count(*) FROM items WHERE active";
    let gate =
        ["--expected-count-query", query, "--sample", "20", "--min-recall", "0.05", "--source-database-attempts", "2"];
    let flip = |collection: &str| {
        let mut args = vec!["alias", "flip", "--data-dir", &d, "live", collection];
        args.extend(gate);
        quiver(&db.url, &args)
    };

    let out = flip("v1");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    no_password(&out);
    let g = count_gate(&out);
    assert_eq!(
        (g["measured"].as_f64(), g["threshold"].as_f64(), g["passed"].as_bool()),
        (Some(300.0), Some(300.0), Some(true))
    );
    let port = db.url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    assert_eq!(g["threshold_from"], format!("`{query}` on {scheme}://127.0.0.1:{port}/shop"));

    // The ETL added an item the collection does not have: refused by exactly one.
    db.sql("INSERT INTO items (id, active) VALUES (300, TRUE)");
    let out = flip("v2");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let g = count_gate(&out);
    assert_eq!(
        (g["measured"].as_f64(), g["threshold"].as_f64(), g["margin"].as_f64()),
        (Some(300.0), Some(301.0), Some(-1.0))
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("count: measured 300 == 301 failed (off by 1)"));
    let live = || {
        let shown = quiver("", &["alias", "show", "--data-dir", &d, "live"]);
        serde_json::from_slice::<serde_json::Value>(&shown.stdout).unwrap()["collection"].clone()
    };
    assert_eq!(live(), "v1", "a refused flip leaves the alias where it was");
    // Nor does a database that does not answer move it.
    let mut args = vec!["alias", "flip", "--data-dir", &d, "live", "v2"];
    args.extend(gate);
    let gone = format!("{scheme}://quiver:{PASSWORD}@127.0.0.1:{}/shop", free_port());
    assert_eq!(quiver(&gone, &args).status.code(), Some(1));
    assert_eq!(live(), "v1");

    // A verify Job against a serving process: the job runs the query, the replica counts.
    let mut server = Stopped(
        Command::new(env!("CARGO_BIN_EXE_quiver"))
            .args(["standalone", "--data-dir", &d, "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let target = format!("http://{}", line.split_whitespace().find_map(|w| w.strip_prefix("grpc=")).expect(&line));
    let result = dir.path().join("result.json").display().to_string();
    let job = |url: &str| {
        let mut args = vec!["verify", "--target", &target, "--collection", "v2", "--result-file", &result];
        args.extend(gate);
        quiver(url, &args)
    };
    db.sql("DELETE FROM items WHERE id = 300");
    let out = job(&db.url);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count_gate(&out)["threshold_from"], format!("`{query}` on {scheme}://127.0.0.1:{port}/shop"));
    // A database that is not there fails the gate with that reason; the replica still counts.
    let gone = format!("{scheme}://quiver:{PASSWORD}@127.0.0.1:{}/shop", free_port());
    let out = job(&gone);
    assert_eq!(out.status.code(), Some(3), "exit 3: try again; {}", String::from_utf8_lossy(&out.stderr));
    no_password(&out);
    let g = count_gate(&out);
    assert_eq!(
        (g["passed"].as_bool(), g["measured"].as_f64(), g["retry"].as_bool()),
        (Some(false), Some(300.0), Some(true))
    );
    assert!(g["error"].as_str().unwrap().contains("could not connect to"), "{g}");
    assert_eq!(
        g["threshold_from"],
        format!(
            "`{query}` on {scheme}://127.0.0.1:{}/shop",
            gone.rsplit_once(':').unwrap().1.split('/').next().unwrap()
        )
    );
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(written["passed"], false, "the termination message says failed too");
}

/// A process killed when dropped, when its test fails too.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers that are not one count, and statements that would write, fail the gate with what
/// the query answered; the table is untouched.
fn only_one_count_is_an_answer(db: &Database) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let base = dir.path().join("base.npy").display().to_string();
    assert!(quiver("", &["generate", "--out", &base, "--vectors", "50", "--dims", "4"]).status.success());
    assert!(
        quiver("", &["import", "--data-dir", &d, "--name", "v", "--source", &base, "--quality", "10"]).status.success()
    );
    let verify = |sql: &str| {
        let args = ["verify", "--data-dir", &d, "--collection", "v", "--sample", "5", "--expected-count-query", sql];
        quiver(&db.url, &args)
    };
    // Refused before anything connects: not a SELECT, or a clause that locks or writes.
    for sql in
        ["TRUNCATE TABLE items", "DROP TABLE items", "DELETE FROM items", "SELECT count(*) FROM items FOR UPDATE"]
    {
        let out = verify(sql);
        assert_eq!(out.status.code(), Some(2), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--expected-count-query"), "{sql}");
    }
    // Run, and answered with something else than one count: the gate fails with what it was
    // (exit 1: asking again gives the same answer).
    let cases = [
        ("SELECT id FROM items", "more than one row"),
        ("SELECT count(*), count(*) FROM items", "answers 2 columns"),
        ("SELECT 'many'", "not an integer"),
        ("SELECT NULL", "NULL"),
        ("SELECT -5", "negative"),
        ("SELECT id FROM items WHERE id < 0", "no row"),
        // One statement only: the second never runs.
        ("SELECT 1; COMMIT; DROP TABLE items", ""),
        // A data-modifying CTE (PostgreSQL; a syntax error for MariaDB) meets the read-only
        // transaction.
        ("WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone", ""),
    ];
    for (sql, says) in cases {
        let out = verify(sql);
        assert_eq!(out.status.code(), Some(1), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        let g = count_gate(&out);
        let error = g["error"].as_str().unwrap_or_else(|| panic!("{sql}: {g}"));
        assert!(error.contains(says) && g["threshold_from"].as_str().unwrap().contains(sql), "{sql}: {g}");
        assert_eq!(g["retry"], serde_json::Value::Null, "{sql}: not worth trying again");
    }
    assert_eq!(db.sql("SELECT count(*) FROM items"), "301", "the queries wrote nothing");
}

/// Both checks against `db`, whose URLs the report shows as `scheme://`.
fn the_count_gate_against(db: Option<Database>, scheme: &str) {
    let Some(db) = db else { return };
    the_count_query_decides_the_flip(&db, scheme);
    db.sql("INSERT INTO items (id, active) VALUES (300, TRUE)");
    only_one_count_is_an_answer(&db);
}

#[test]
fn the_count_gate_against_postgresql() {
    the_count_gate_against(postgres(), "postgres");
}

#[test]
fn the_count_gate_against_mariadb() {
    the_count_gate_against(mariadb(), "mysql");
}
