//! quiver-e2e: the harness for end-to-end tests that run the real `quiver` binary as separate
//! processes on 127.0.0.1 (ephemeral ports), and an L4 forwarder that plays a Kubernetes
//! Service: when its backends change, new connections go to the new backends while existing
//! connections stay where they are until that backend closes them (what kube-proxy does).

use quiver_api::client::{Client, ClientOptions};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

/// The `quiver` binary of this workspace's build, built on first use when missing. This crate
/// does not link the engine, so `cargo test -p quiver-e2e` alone does not rebuild it: run the
/// workspace's tests (as `.ci/run` does). It is not rebuilt here when it exists, because a
/// plain `cargo build` would replace the test build's binary (with the engine's fault points
/// compiled in) under the crash tests running beside. `QUIVER_BIN` names another binary.
pub fn quiver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("QUIVER_BIN") {
            return PathBuf::from(path);
        }
        // <target>/<profile>/deps/<test-exe> -> <target>/<profile>/quiver
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let bin = profile_dir.join("quiver");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "quiver-engine", "--bin", "quiver"])
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building the quiver binary failed");
        }
        bin
    })
    .clone()
}

/// Runs `quiver args...` to completion: (exit status, stdout, stderr).
pub fn run(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(quiver_bin()).args(args).output().expect("running quiver");
    (out.status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A running `quiver` process; killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
}

impl Proc {
    /// Starts `quiver args...` with its stderr in `<dir>/<name>.log`, and waits for its
    /// "quiver listening" line to learn the bound ports.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        Proc::start_with_env(dir, name, args, &[])
    }

    /// [`Proc::start`] with `env` (a pod's environment) added.
    pub fn start_with_env(dir: &Path, name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("creating the log file");
        let child = Command::new(quiver_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            // The test's directory is where its "ETL" writes source files.
            .env("QUIVER_SOURCE_ROOT", dir)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawning quiver");
        let mut proc = Proc { name: name.to_string(), child, log, grpc: "0.0.0.0:0".parse().unwrap(), http: None };
        let line = proc.wait_for_log("quiver listening", Duration::from_secs(30));
        for word in line.split_whitespace() {
            if let Some(a) = word.strip_prefix("grpc=") {
                proc.grpc = a.parse().expect("grpc address");
            }
            if let Some(a) = word.strip_prefix("http=") {
                proc.http = a.parse().ok();
            }
        }
        proc
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains `needle`, and returns that line; panics with the log.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) =
                BufReader::new(text.as_bytes()).lines().map_while(Result::ok).find(|l| l.contains(needle))
            {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before logging {needle:?}:\n{text}", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not log {needle:?} in {timeout:?}:\n{text}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGKILL: no clean-up at all, like a node losing power.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running after {timeout:?}:\n{}", self.name, self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting")
    }

    /// A client of this process (call inside a tokio runtime).
    pub fn client(&self) -> Client {
        Client::new(&self.url(), ClientOptions::default()).expect("client")
    }

    /// Waits until grpc.health.v1 reports SERVING.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(ServingStatus::Serving) = client.health("").await {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!("{} exited ({status}) before SERVING:\n{}", self.name, self.log_text());
            }
            assert!(Instant::now() < deadline, "{} not SERVING after {timeout:?}:\n{}", self.name, self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder standing in for a Kubernetes Service.
#[derive(Clone)]
pub struct Forwarder {
    pub addr: SocketAddr,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Forwarder {
    /// Listens on 127.0.0.1 (ephemeral port); runs on the current tokio runtime.
    pub async fn start(backends: Vec<SocketAddr>) -> Forwarder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the forwarder");
        let forwarder = Forwarder {
            addr: listener.local_addr().unwrap(),
            backends: Arc::new(RwLock::new(backends)),
            next: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(AtomicUsize::new(0)),
        };
        let f = forwarder.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                f.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(backend) = f.pick() else {
                    continue; // no endpoints: the connection is refused by closing it
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        forwarder
    }

    fn pick(&self) -> Option<SocketAddr> {
        let backends = self.backends.read().unwrap();
        if backends.is_empty() {
            return None;
        }
        Some(backends[self.next.fetch_add(1, Ordering::Relaxed) % backends.len()])
    }

    /// The selector changed: only new connections see the new backends.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.write().unwrap() = backends;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Writes `n` clustered vectors of `dims` to `<dir>/<file>` and returns (path, vectors).
pub fn dataset(dir: &Path, file: &str, n: usize, dims: usize, seed: u64) -> (String, Vec<f32>) {
    let path = dir.join(file);
    let data = generate(&path, n, dims, seed, 0);
    (path.display().to_string(), data)
}

/// `n` vectors of `dims` from stream `stream` of the clustered generator seeded `seed` (base
/// data is stream 0, held-out queries stream 1), made by `quiver generate` as users make test
/// data, written to `path` (.npy) and read back.
pub fn generate(path: &Path, n: usize, dims: usize, seed: u64, stream: u64) -> Vec<f32> {
    let arg = |v: usize| v.to_string();
    let out = Command::new(quiver_bin())
        .args(["generate", "--out", path.to_str().expect("a UTF-8 path"), "--vectors", &arg(n), "--dims", &arg(dims)])
        .args(["--seed", &seed.to_string(), "--stream", &stream.to_string()])
        .output()
        .expect("running quiver generate");
    assert!(out.status.success(), "quiver generate: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(path).expect("reading the generated .npy");
    // NumPy format 1.0 (what quiver writes): magic, version, u16 header length, header, data.
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "an .npy of format 1.0");
    let start = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let data: Vec<f32> = bytes[start..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(data.len(), n * dims, "quiver generate wrote {n} x {dims} values");
    data
}

/// `n` held-out query vectors of `dims` for data of `seed`, generated under `dir`.
pub fn queries(dir: &Path, n: usize, dims: usize, seed: u64) -> Vec<f32> {
    generate(&dir.join(format!("queries-{seed}-{n}.npy")), n, dims, seed, 1)
}

/// A search request for the endpoint's own collection (what a client behind an alias sends).
pub fn query(vector: &[f32], k: u32) -> quiver_api::proto::SearchRequest {
    quiver_api::proto::SearchRequest { vector: vector.to_vec(), k, ..Default::default() }
}

/// Fails the test when any call made under load failed, showing how many and the first three.
#[track_caller]
pub fn assert_none_failed<'a>(outcomes: impl IntoIterator<Item = &'a Result<String, String>>) {
    let all: Vec<_> = outcomes.into_iter().collect();
    let failed: Vec<_> = all.iter().filter(|o| o.is_err()).collect();
    assert!(failed.is_empty(), "{} of {} calls failed: {:?}", failed.len(), all.len(), &failed[..failed.len().min(3)]);
}

/// The operator's gate, as its collection controller applies it to a finished verify Job: the
/// Job's exit code and its termination message (the JSON report) go through
/// [`quiver_operator::phase::next`], and the alias may flip only to a collection it finds
/// verified. The local e2e tests flip their "alias Service" only when this says so.
pub fn operator_gate_passes(exit_code: Option<i32>, report: &str) -> bool {
    use quiver_operator::crd::{Phase, VectorCollectionStatus};
    use quiver_operator::phase::{JobState, Observed, WriterState, next};
    let verify = match exit_code {
        Some(0) => JobState::Succeeded,
        _ => JobState::Failed { message: report.to_string() },
    };
    let observed = Observed {
        generation: 1,
        writer: WriterState::Sealed { count: 1, setting: "signscan quality=200".into(), stored: None, sha256: None },
        writer_problem: None,
        idle: false,
        ready_replicas: 1,
        wanted_replicas: 1,
        warmup: JobState::Succeeded,
        verify,
        gates: quiver_operator::controller::collection::gates(report),
    };
    let verifying =
        VectorCollectionStatus { phase: Phase::Verifying, observed_generation: Some(1), ..Default::default() };
    next(Some(&verifying), &observed).verified
}
