//! The `quiver` command line's arguments, as clap parses them: types only. [`super`] maps them
//! to the configurations the roles and commands take. Every flag also reads a `QUIVER_*`
//! environment variable.

use crate::import::Format;
use crate::types::{ArroyVectors, Backend, Metric, Shortlist, Strategy};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "quiver", version, about = "A vector-search engine with blue/green index rebuilds")]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "QUIVER_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import vectors from a file or URL into a new collection, build its index and seal it.
    Import(ImportArgs),
    /// Query a collection (or the collection behind an alias).
    Search(SearchArgs),
    /// Print a collection's manifest, partitions and tags as JSON.
    Inspect(InspectArgs),
    /// Measure a collection's gates (the ones an alias flip requires); exit 1 if any fails.
    Verify(VerifyArgs),
    /// Preload a collection and run simulated queries until latency settles.
    Warmup(WarmupArgs),
    /// Flip an alias to a collection, only if it passes its gates.
    Alias(AliasArgs),
    /// Snapshots in a snapshot store (backup, restore, promotion to another cluster).
    Snapshot(SnapshotArgs),
    /// Build from .npy files and measure exact search and each strategy's quality sweep.
    Bench(BenchArgs),
    /// Run the whole blue/green rebuild cycle on generated data, in one process.
    Demo(DemoArgs),
    /// Write clustered synthetic vectors to an .npy file.
    Generate(GenerateArgs),
    /// Serve the collections and aliases under --data-dir over gRPC (Search, Admin, Snapshot,
    /// health, reflection): the embedded single-machine role.
    Standalone(StandaloneArgs),
    /// Import from --source (or accept Ingest streams), build, seal, write the snapshot, and
    /// serve it to replicas.
    Writer(Box<WriterArgs>),
    /// Fetch a collection's snapshot from the writer or a peer, check it, preload and warm it,
    /// then serve Search.
    Replica(ReplicaArgs),
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub dir: DataDir,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How a serving role listens and whom it lets in.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "QUIVER_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Address for the HTTP endpoints /metrics, /livez and /readyz (none when absent).
    #[arg(long, env = "QUIVER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Close each client connection (GOAWAY, calls in flight finish) after this many seconds,
    /// so long-lived HTTP/2 connections rebalance over new replicas.
    #[arg(long, env = "QUIVER_MAX_CONNECTION_AGE_SECS")]
    pub max_connection_age_secs: Option<u64>,
    /// On SIGTERM, report NOT_SERVING for this long before closing connections, so endpoints
    /// and load balancers stop routing new calls here first.
    #[arg(long, env = "QUIVER_DRAIN_DELAY_SECS", default_value_t = 0)]
    pub drain_delay_secs: u64,
    /// After a drain or SIGTERM, calls in flight get this many seconds to finish.
    #[arg(long, env = "QUIVER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Largest Ingest batch or Snapshot chunk message, in bytes (Search messages are limited
    /// to 1 MiB, Admin messages to 4 MiB).
    #[arg(long, env = "QUIVER_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub max_message_bytes: usize,
    /// Calls served at once; more are refused with RESOURCE_EXHAUSTED (health is exempt).
    #[arg(long, env = "QUIVER_MAX_IN_FLIGHT", default_value_t = crate::limits::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// A host name the console at `/` answers to besides localhost and IP addresses (repeat
    /// for several, or separate with commas). Requests naming any other `Host` are refused, so
    /// a page that rebinds its own DNS name to this address cannot use the console.
    #[arg(long = "console-host", env = "QUIVER_CONSOLE_HOSTS", value_delimiter = ',')]
    pub console_hosts: Vec<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Leave Search open when a token is configured (by default every service but health and
    /// reflection requires it).
    #[arg(long, env = "QUIVER_SEARCH_WITHOUT_TOKEN")]
    pub search_without_token: bool,
    /// Allow listening on a non-loopback address without a token (anyone who reaches the
    /// port could then ingest, drain or read snapshots).
    #[arg(long, env = "QUIVER_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain: serve TLS (rustls) instead of plaintext.
    #[arg(long, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The shared bearer token: servers require it, clients send it.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// A file holding the bearer token (e.g. a mounted Secret).
    #[arg(long, env = "QUIVER_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer --token-file; environment values are hidden in --help).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// How a client command reaches a running engine.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// gRPC address of a running engine (e.g. http://replica:7700); the command runs there
    /// instead of on --data-dir.
    #[arg(long, env = "QUIVER_TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// PEM CA certificate to trust for https:// targets.
    #[arg(long, env = "QUIVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With --target: also write the JSON result here (a Kubernetes Job's termination message).
    #[arg(long, env = "QUIVER_RESULT_FILE", default_value = "/dev/termination-log")]
    pub result_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct WriterArgs {
    #[command(flatten)]
    pub dir: DataDir,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Name of the collection this writer builds.
    #[arg(long, env = "QUIVER_COLLECTION")]
    pub collection: String,
    /// Path or http(s) URL to import from at start; without it the writer waits for Ingest.
    #[arg(long, env = "QUIVER_SOURCE")]
    pub source: Option<String>,
    /// Restore the collection sealed from this snapshot (`s3://bucket/prefix/<collection>`,
    /// as `--snapshot-store` published it under its prefix) instead of importing: no import and
    /// no build; its dimensions and distance must be the writer's, its name --collection.
    #[arg(long, env = "QUIVER_RESTORE_FROM", conflicts_with = "source")]
    pub restore_from: Option<String>,
    /// Bytes one Ingest Write stream may spool (end it and start another beyond).
    #[arg(long, env = "QUIVER_MAX_STREAM_BYTES", default_value_t = 8 << 30)]
    pub max_stream_bytes: u64,
    /// Bytes the ingest spool may hold in all before Seal.
    #[arg(long, env = "QUIVER_MAX_SPOOL_BYTES", default_value_t = 64 << 30)]
    pub max_spool_bytes: u64,
    /// Seconds a Write stream may stay silent between two batches before it is dropped (with
    /// none of its rows kept).
    #[arg(long, env = "QUIVER_WRITE_IDLE_SECS", default_value_t = crate::serve::ingest::WRITE_IDLE.as_secs())]
    pub write_idle_secs: u64,
    /// Least bytes of vectors per second a Write stream must send over each window of
    /// --write-idle-secs, or it is dropped with none of its rows kept (0: no floor).
    #[arg(long, env = "QUIVER_WRITE_MIN_BYTES_PER_SEC", default_value_t = crate::serve::ingest::MIN_WRITE_BYTES_PER_SEC)]
    pub write_min_bytes_per_sec: u64,
    /// Also publish the sealed snapshot to this object-store prefix (`s3://bucket/prefix`, gs://,
    /// az://), under `<prefix>/<collection>/`, in the background and retried until it lands;
    /// replicas can then restore from it without this writer.
    #[arg(long, env = "QUIVER_SNAPSHOT_STORE")]
    pub snapshot_store: Option<String>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct ReplicaArgs {
    #[command(flatten)]
    pub dir: DataDir,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Name of the collection to fetch and serve.
    #[arg(long, env = "QUIVER_COLLECTION")]
    pub collection: String,
    /// Where the snapshot is, tried in turn: gRPC addresses (the writer, ready peers) and
    /// snapshot stores (`s3://bucket/prefix` as the writer's --snapshot-store).
    #[arg(long, env = "QUIVER_SNAPSHOT_FROM", value_delimiter = ',', required = true)]
    pub snapshot_from: Vec<String>,
    /// Read a snapshot store with the machine's own identity from its metadata service when
    /// the environment names no credentials (see `quiver import --help`).
    #[arg(long, env = "QUIVER_AMBIENT_CREDENTIALS")]
    pub ambient_credentials: bool,
    /// Cap on the snapshot download rate, in bytes per second (protects the writer's network).
    #[arg(long, env = "QUIVER_FETCH_BYTES_PER_SEC")]
    pub fetch_bytes_per_sec: Option<u64>,
    /// Give up (exit 1) when no source delivered a good snapshot within this many seconds.
    #[arg(long, env = "QUIVER_FETCH_TIMEOUT_SECS", default_value_t = 3600)]
    pub fetch_timeout_secs: u64,
    /// One attempt at one source ends after this many seconds (the next resumes where it stopped).
    #[arg(long, env = "QUIVER_FETCH_ATTEMPT_TIMEOUT_SECS", default_value_t = 900)]
    pub fetch_attempt_timeout_secs: u64,
    /// An attempt ends when no chunk came for this many seconds (a live but stalled source).
    #[arg(long, env = "QUIVER_FETCH_STALL_TIMEOUT_SECS", default_value_t = 30)]
    pub fetch_stall_timeout_secs: u64,
    /// Log the download's bytes held, rate and time left this often, in seconds.
    #[arg(long, env = "QUIVER_FETCH_PROGRESS_INTERVAL_SECS", default_value_t = 10)]
    pub fetch_progress_interval_secs: u64,
    /// Simulated queries run before reporting SERVING.
    #[arg(long, env = "QUIVER_WARMUP_MAX_QUERIES", default_value_t = 2000)]
    pub warmup_max_queries: usize,
    /// PEM CA certificate to trust for https:// snapshot sources.
    #[arg(long, env = "QUIVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Serve only the snapshot with this hex sha256 (the operator passes the one the writer
    /// sealed, so every replica serves what was verified): a source that announces another is
    /// refused, and one on disk with another is fetched again.
    #[arg(long, env = quiver_api::environment::SNAPSHOT_SHA256)]
    pub snapshot_sha256: Option<String>,
}

#[derive(Debug, Args)]
pub struct DataDir {
    /// Directory holding the collections.
    #[arg(long, env = "QUIVER_DATA_DIR", default_value = "./quiver-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnDuplicate {
    Reject,
    LastWins,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// Name of the new collection.
    #[arg(long, alias = "collection", env = "QUIVER_COLLECTION")]
    pub name: String,
    /// Path or http(s) URL of a .npy, .fvecs or .jsonl file.
    #[arg(long, env = "QUIVER_SOURCE")]
    pub source: String,
    #[command(flatten)]
    pub build: BuildArgs,
}

/// How records are read and the collection is built.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[arg(long, env = "QUIVER_FORMAT")]
    pub format: Option<Format>,
    #[arg(long, env = "QUIVER_DISTANCE", default_value = "cosine")]
    pub distance: Metric,
    /// Required dimension (default: that of the first record).
    #[arg(long, env = "QUIVER_DIMENSIONS")]
    pub dimensions: Option<usize>,
    #[arg(long, env = "QUIVER_INDEX", value_enum, default_value = "arroy")]
    pub index: Backend,
    /// arroy trees per partition (default: 0, no arroy index: the search path never walks a
    /// tree; trees give the `index` strategy; see BENCHMARKS.md).
    #[arg(long, env = "QUIVER_N_TREES")]
    pub n_trees: Option<usize>,
    /// How arroy keeps the vectors of its trees: binary (1 bit per dimension; the default for
    /// cosine and euclidean) or full (a float32 copy; dot products always).
    #[arg(long, env = "QUIVER_ARROY_VECTORS", value_enum)]
    pub arroy_vectors: Option<ArroyVectors>,
    /// How the sign-code scan re-ranks its shortlist: rabitq (estimates first, float32 only
    /// where their error bound cannot rule an item out), scalar8 (the same with 8-bit scalar
    /// codes, one byte per dimension per item) or hamming (every item).
    #[arg(long, env = "QUIVER_SHORTLIST", value_enum)]
    pub shortlist: Option<Shortlist>,
    /// Memory arroy's build may use, in MiB (default: half the memory available at start).
    #[arg(long, env = "QUIVER_INDEX_MEMORY_MIB")]
    pub index_memory_mib: Option<usize>,
    /// hannoy build quality.
    #[arg(long, env = "QUIVER_EF_CONSTRUCTION", default_value_t = 100)]
    pub ef_construction: usize,
    #[arg(long, env = "QUIVER_ON_DUPLICATE", value_enum, default_value = "reject")]
    pub on_duplicate: OnDuplicate,
    /// Partition for records that do not name one.
    #[arg(long, env = "QUIVER_PARTITION")]
    pub partition: Option<String>,
    /// Directories a local --source must lie under, once symlinks and `..` are resolved
    /// (repeatable or comma-separated). Default: the data directory and the working directory.
    #[arg(long, env = "QUIVER_SOURCE_ROOT", value_delimiter = ',')]
    pub source_root: Vec<PathBuf>,
    /// Added to row numbers to form ids for .npy/.fvecs rows.
    #[arg(long, env = "QUIVER_ID_OFFSET", default_value_t = 0)]
    pub id_offset: u64,
    /// Parquet: the column of item ids (any integer type).
    #[arg(long, env = "QUIVER_ID_COLUMN", default_value = "id")]
    pub id_column: String,
    /// Parquet: the column of vectors (FixedSizeList<Float32>, or List / LargeList of Float32 or
    /// Float64).
    #[arg(long, env = "QUIVER_VECTOR_COLUMN", default_value = "vector")]
    pub vector_column: String,
    /// Parquet: a string column of partitions (default: none; see --partition).
    #[arg(long, env = "QUIVER_PARTITION_COLUMN")]
    pub partition_column: Option<String>,
    /// Parquet: a list-of-strings column of tags (default: none).
    #[arg(long, env = "QUIVER_TAGS_COLUMN")]
    pub tags_column: Option<String>,
    /// Let an object-store source be read with the machine's own identity from its metadata
    /// service (EC2 instance profile, Azure managed identity, the GCE/GKE metadata server, which
    /// is how GKE Workload Identity is served) when the environment names no credentials.
    /// Off by default: in a cluster it is the node's identity.
    #[arg(long, env = "QUIVER_AMBIENT_CREDENTIALS")]
    pub ambient_credentials: bool,
    /// Where a URL source read at any offset (Parquet) is downloaded first: the data directory.
    #[arg(skip)]
    pub scratch_dir: Option<PathBuf>,
    /// Rows per write transaction.
    #[arg(long, env = "QUIVER_BATCH_ROWS", default_value_t = 100_000)]
    pub batch_rows: usize,
    /// Default search strategy, used with --quality.
    #[arg(long, env = "QUIVER_STRATEGY", default_value = "signscan")]
    pub strategy: Strategy,
    /// Default quality knob; when absent it is calibrated to --target-recall after the build.
    #[arg(long, env = "QUIVER_QUALITY")]
    pub quality: Option<usize>,
    /// Default coarse lists probed, used with --quality (0: all).
    #[arg(long, env = "QUIVER_PROBES", default_value_t = 0)]
    pub probes: usize,
    /// Coarse lists per partition the sign-code scan probes (0: none, scan every code);
    /// default: about sqrt(items) for partitions of 20,000 items or more.
    #[arg(long, env = "QUIVER_LISTS")]
    pub lists: Option<usize>,
    /// Recall@10 the calibrated default setting must reach.
    #[arg(long, env = "QUIVER_TARGET_RECALL", default_value_t = 0.95)]
    pub target_recall: f64,
}

#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    pub dir: DataDir,
    /// Collection name.
    #[arg(long, env = "QUIVER_COLLECTION", conflicts_with = "alias", required_unless_present = "alias")]
    pub collection: Option<String>,
    /// Alias name (standalone catalog).
    #[arg(long, env = "QUIVER_ALIAS")]
    pub alias: Option<String>,
}

impl Target {
    /// The collection or alias named.
    pub fn name(&self) -> &str {
        self.collection.as_deref().or(self.alias.as_deref()).expect("clap requires one")
    }
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub target: Target,
    /// The query as a JSON array, e.g. "[0.1, 0.2]".
    #[arg(long, conflicts_with = "queries")]
    pub vector: Option<String>,
    /// An .npy/.fvecs/.jsonl file of queries (each is answered).
    #[arg(long)]
    pub queries: Option<String>,
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,
    /// Comma-separated partitions (default: all).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<String>,
    /// Only items with all these tags (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    #[arg(long)]
    pub strategy: Option<Strategy>,
    #[arg(long)]
    pub quality: Option<usize>,
    /// Coarse lists probed (0: all); default: the collection's calibrated setting.
    #[arg(long)]
    pub probes: Option<usize>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// The vector count the source promised.
    #[arg(long, env = "QUIVER_EXPECTED_COUNT", conflicts_with = "expected_count_query")]
    pub expected_count: Option<u64>,
    /// SQL answering the count instead, run read-only against --source-database-url when
    /// verifying, e.g. "SELECT count(*) FROM items WHERE active"; an unreachable database
    /// fails the gate.
    #[arg(long, env = "QUIVER_EXPECTED_COUNT_QUERY", allow_hyphen_values = true)]
    pub expected_count_query: Option<String>,
    /// The database the count query runs against: postgres:// or mysql:// (mariadb://), with
    /// its credentials; best from the environment (a Secret), as it holds the password.
    #[arg(long, env = "QUIVER_SOURCE_DATABASE_URL", hide_env_values = true)]
    pub source_database_url: Option<SecretString>,
    /// Connection attempts to the database, 1, 2, 4, 8, 16 s apart, before the gate fails
    /// (exit 3: try again).
    #[arg(long, env = "QUIVER_SOURCE_DATABASE_ATTEMPTS", default_value_t = crate::verify::count_query::CONNECT_ATTEMPTS)]
    pub source_database_attempts: u32,
    #[arg(long, env = "QUIVER_MIN_RECALL", default_value_t = 0.9)]
    pub min_recall: f64,
    #[arg(long, env = "QUIVER_MAX_P99_MS")]
    pub max_p99_ms: Option<f64>,
    #[arg(long, short, env = "QUIVER_VERIFY_K", default_value_t = 10)]
    pub k: usize,
    /// Queries to check recall with (.npy/.fvecs/.jsonl); default: sampled near stored vectors.
    #[arg(long, env = "QUIVER_VERIFY_QUERIES")]
    pub queries: Option<String>,
    #[arg(long, env = "QUIVER_VERIFY_SAMPLE", default_value_t = 200)]
    pub sample: usize,
    /// Also write the JSON report here.
    #[arg(long, env = "QUIVER_VERIFY_OUTPUT")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct WarmupArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[arg(long, env = "QUIVER_WARMUP_MAX_QUERIES", default_value_t = 2000)]
    pub max_queries: usize,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: SnapshotAction,
    /// The store: an object-store prefix, as a writer's --snapshot-store.
    #[arg(long, env = "QUIVER_SNAPSHOT_STORE", global = true)]
    pub store: Option<String>,
    /// Reach the store with the machine's own identity (see `quiver import --help`).
    #[arg(long, env = "QUIVER_AMBIENT_CREDENTIALS", global = true)]
    pub ambient_credentials: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// The snapshots the store holds (completely published ones), as JSON: the last one
    /// published of each collection.
    List {
        /// Every snapshot the store keeps, those published over too (by their sha256).
        #[arg(long)]
        all: bool,
    },
    /// Publish a sealed collection of --data-dir (its snapshot is written first if missing).
    Push {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        collection: String,
    },
    /// Restore a collection from the store into --data-dir, checked, ready to serve.
    Pull {
        #[command(flatten)]
        dir: DataDir,
        #[arg(long)]
        collection: String,
        /// The snapshot of this sha256 (64 lowercase hex), also when another was published
        /// since; by default the one published last.
        #[arg(long)]
        sha256: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AliasArgs {
    #[command(subcommand)]
    pub action: AliasAction,
}

#[derive(Debug, Subcommand)]
pub enum AliasAction {
    /// Verify COLLECTION, then flip ALIAS to it; refused (exit 1) when a gate fails.
    Flip {
        #[command(flatten)]
        dir: DataDir,
        alias: String,
        collection: String,
        #[command(flatten)]
        gate: GateArgs,
    },
    /// Print an alias's target, previous target and history as JSON.
    Show {
        #[command(flatten)]
        dir: DataDir,
        alias: String,
    },
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Base vectors (.npy) to build from; not needed with --endpoint.
    #[arg(long, required_unless_present = "endpoint")]
    pub base: Option<String>,
    /// Measure a running engine over gRPC instead of building in this process.
    #[arg(long, requires = "collection")]
    pub endpoint: Option<String>,
    /// With --endpoint: the collection (or alias) to query.
    #[arg(long)]
    pub collection: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    /// Query vectors (.npy).
    #[arg(long)]
    pub queries: String,
    /// Exact top-100 ids per query (.npy int32/int64); computed when absent.
    #[arg(long)]
    pub ground_truth: Option<PathBuf>,
    #[arg(long, default_value = "cosine")]
    pub distance: Metric,
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,
    #[arg(long, default_value_t = 1)]
    pub partitions: usize,
    /// Durable indexes to build and sweep.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "arroy")]
    pub index: Vec<Backend>,
    /// arroy trees per partition (default: the build's default, 0: no arroy index, so no
    /// --search-k rows).
    #[arg(long)]
    pub n_trees: Option<usize>,
    /// How arroy keeps its vectors (binary, or full float32 copies).
    #[arg(long, value_enum)]
    pub arroy_vectors: Option<ArroyVectors>,
    /// How the sign-code scan re-ranks its shortlist (rabitq, scalar8 or hamming).
    #[arg(long, value_enum)]
    pub shortlist: Option<Shortlist>,
    #[arg(long, default_value_t = 100)]
    pub ef_construction: usize,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,150,200,300,500,1000")]
    pub signscan: Vec<usize>,
    /// Coarse lists probed, each with every --signscan value (0: all lists); default: the
    /// calibration's ladder (1/256 .. 1/4 of the lists, then all).
    #[arg(long, value_delimiter = ',')]
    pub probes: Vec<usize>,
    /// Coarse lists per partition (0: none); default: about sqrt(items) from 20,000 items.
    #[arg(long)]
    pub lists: Option<usize>,
    /// arroy search_k values (0 = arroy's default).
    #[arg(long, value_delimiter = ',', default_value = "0,4000,16000,32000")]
    pub search_k: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "16,32,48,64,100,200")]
    pub ef: Vec<usize>,
    /// Build here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Client threads for the throughput runs (default search setting).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,16")]
    pub threads: Vec<usize>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's collections here (default: a temporary directory).
    #[arg(long, env = "QUIVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 30_000)]
    pub vectors: usize,
    #[arg(long, default_value_t = 128)]
    pub dims: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub vectors: usize,
    #[arg(long, default_value_t = 128)]
    pub dims: usize,
    #[arg(long, default_value_t = 64)]
    pub clusters: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which stream of the generator (base and queries use different ones).
    #[arg(long, default_value_t = 0)]
    pub stream: u64,
}

/// A flag's value that holds a credential: `{:?}` of the arguments never shows it.
#[derive(Clone)]
pub struct SecretString(pub String);

impl std::str::FromStr for SecretString {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(SecretString(s.to_string()))
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(not shown)")
    }
}
