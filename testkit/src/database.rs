//! Source databases: a real PostgreSQL and a real MariaDB (Debian's `postgresql` and
//! `mariadb-server`, which `.ci/run` installs), each started on a loopback port with its data in
//! a temporary directory. Without them a test skips, saying so, or fails when
//! `QUIVER_REQUIRE_TOOLS` is set (CI).

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A database server on loopback, stopped when dropped.
pub struct Database {
    child: Child,
    /// The URL quiver is given, with the user's password.
    pub url: String,
    /// Runs SQL as the administrator (through the server's socket).
    admin: Vec<String>,
    dir: tempfile::TempDir,
}

pub const PASSWORD: &str = "pw-7f3a-not-shown";

impl Drop for Database {
    fn drop(&mut self) {
        // Both servers shut down cleanly on SIGTERM (PostgreSQL's "smart", MariaDB's normal
        // shutdown); killed only when that takes too long.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Database {
    /// Runs `statement` as the administrator; its output, trimmed.
    pub fn sql(&self, statement: &str) -> String {
        let out = Command::new(&self.admin[0]).args(&self.admin[1..]).arg(statement).output().unwrap();
        assert!(out.status.success(), "{statement}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until the administrator's client gets an answer.
    fn wait_ready(self) -> Database {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.admin[0]).args(&self.admin[1..]).arg("SELECT 1").output().unwrap();
            if out.status.success() {
                return self;
            }
            assert!(Instant::now() < deadline, "the database did not start; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn missing(what: &str) -> Option<Database> {
    assert!(std::env::var_os("QUIVER_REQUIRE_TOOLS").is_none(), "no {what}, and CI requires it");
    eprintln!("SKIPPED: no {what} (apt-get install postgresql mariadb-server)");
    None
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// PostgreSQL's programs: `QUIVER_POSTGRES_BIN`, else Debian's newest /usr/lib/postgresql/*/bin.
fn postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("QUIVER_POSTGRES_BIN") {
        return Some(dir.into());
    }
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
    dirs.sort_by_key(|d| d.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
    dirs.into_iter().rev().find(|d| d.join("initdb").exists())
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user the
/// Debian package creates (setpriv execs, so the server is our child and gets our signals).
fn as_postgres(bin: &Path, program: &str) -> Vec<String> {
    let program = bin.join(program).display().to_string();
    if is_root() {
        ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"]
            .map(String::from)
            .into_iter()
            .chain([program])
            .collect()
    } else {
        vec![program]
    }
}

/// A PostgreSQL server with a database `shop`, its user `quiver` reached by password over TCP.
pub fn postgres() -> Option<Database> {
    let Some(bin) = postgres_bin() else { return missing("PostgreSQL") };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(dir.path().join("pw"), PASSWORD).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path().join("pw"), std::fs::Permissions::from_mode(0o644)).unwrap();
    if is_root() {
        assert!(Command::new("chown").args(["postgres:postgres"]).arg(&data).status().unwrap().success());
    }
    let run = |argv: Vec<String>| {
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let mut initdb = as_postgres(&bin, "initdb");
    // Password (SCRAM) over TCP, as a product database is reached; trust on the socket, for the
    // test's own administration.
    initdb.extend(["-D", &data.display().to_string(), "-U", "quiver", "--auth-local=trust"].map(String::from));
    initdb.extend(["--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"].map(String::from));
    initdb.push(format!("--pwfile={}", dir.path().join("pw").display()));
    run(initdb);
    let port = free_port().to_string();
    let mut server = as_postgres(&bin, "postgres");
    let (d, p) = (data.display().to_string(), port.clone());
    server.extend(["-D", &d, "-k", &d, "-h", "127.0.0.1", "-p", &p, "-c", "fsync=off"].map(String::from));
    let child = Command::new(&server[0])
        .args(&server[1..])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let mut admin = as_postgres(&bin, "psql");
    admin.extend(
        ["-h", &d, "-p", &p, "-U", "quiver", "-d", "postgres", "-qAt", "-v", "ON_ERROR_STOP=1", "-c"].map(String::from),
    );
    let mut db =
        Database { child, url: format!("postgres://quiver:{PASSWORD}@127.0.0.1:{port}/shop"), admin, dir }.wait_ready();
    db.sql("CREATE DATABASE shop");
    let at = db.admin.iter().position(|a| a == "postgres").unwrap();
    db.admin[at] = "shop".into();
    Some(db)
}

/// A MariaDB server with a database `shop`, its user `quiver` reached by password over TCP.
pub fn mariadb() -> Option<Database> {
    let server =
        ["/usr/sbin/mariadbd", "mariadbd"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok());
    let Some(server) = server else { return missing("MariaDB") };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let socket = dir.path().join("sock").display().to_string();
    // As root MariaDB must be told it may run as root; otherwise it runs as whoever we are.
    let user: &[&str] = if is_root() { &["--user=root"] } else { &[] };
    let install = Command::new("mariadb-install-db")
        .args([
            "--no-defaults",
            &format!("--datadir={data}"),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .args(user)
        .output()
        .unwrap();
    assert!(install.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&install.stderr));
    let port = free_port();
    let child = Command::new(server)
        .args(["--no-defaults", &format!("--datadir={data}"), &format!("--socket={socket}"), &format!("--port={port}")])
        .args(["--bind-address=127.0.0.1", "--skip-log-bin", "--innodb-buffer-pool-size=16M"])
        .arg(format!("--pid-file={}", dir.path().join("pid").display()))
        .args(user)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let admin = |database: &str| {
        ["mariadb", "--no-defaults", "-S", &socket, "-u", "root", "-N", "-B", "-D", database, "-e"]
            .map(String::from)
            .to_vec()
    };
    let db =
        Database { child, url: format!("mysql://quiver:{PASSWORD}@127.0.0.1:{port}/shop"), admin: admin("mysql"), dir }
            .wait_ready();
    db.sql("CREATE DATABASE shop");
    // The count user may delete and drop too: quiver's checks, not the grants, must stop it.
    db.sql(&format!(
        "CREATE USER 'quiver'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT SELECT, DELETE, DROP ON shop.* TO 'quiver'@'%'"
    ));
    let mut db = db;
    db.admin = admin("shop");
    Some(db)
}
