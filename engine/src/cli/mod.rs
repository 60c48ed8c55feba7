//! The `quiver` command line: [`args`] holds what clap parses; this module maps it to the
//! configurations the roles ([`crate::roles`]) and the local commands ([`local`]) take, and
//! holds nothing else.

pub mod args;
mod local;

pub use args::{Cli, Command};

use crate::collection::builder::{BuildOptions, Duplicates};
use crate::error::{Error, Result};
use crate::import::object::Credentials;
use crate::import::parquet::ParquetColumns;
use crate::import::{self, ReadOptions};
use crate::roles::jobs::Remote;
use crate::roles::replica::{FetchOptions, ReplicaConfig};
use crate::roles::standalone::StandaloneConfig;
use crate::roles::writer::WriterConfig;
use crate::roles::{self, ServeRole};
use crate::serve::ServeConfig;
use crate::serve::ingest::WritePace;
use crate::spool::SpoolLimits;
use crate::types::{Backend, IndexParams, SearchDefaults};
use crate::verify::VerifyOptions;
use crate::verify::count_query::CountQuery;
use args::*;
use quiver_api::client::ClientOptions;
use std::path::Path;
use std::time::Duration;

/// What the process should exit with: 0 success, 1 a gate failed or a flip was refused.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Import(mut a) => {
            a.build.default_source_roots(&a.dir.data_dir);
            local::import(a)
        }
        Command::Search(a) => local::search(a),
        Command::Inspect(a) => local::inspect(a),
        Command::Verify(a) => match &a.remote.target {
            Some(target) => roles::jobs::verify(
                &a.remote.remote(target, a.target.name())?,
                a.gate.options()?,
                a.gate.output.as_deref(),
            ),
            None => local::verify(a),
        },
        Command::Warmup(a) => match &a.remote.target {
            Some(target) => roles::jobs::warmup(&a.remote.remote(target, a.target.name())?, a.max_queries),
            None => local::warmup(a),
        },
        Command::Alias(a) => local::alias(a.action),
        Command::Snapshot(a) => local::snapshot(a),
        Command::Bench(a) => local::bench(a),
        Command::Demo(a) => local::demo(a),
        Command::Generate(a) => local::generate(a),
        Command::Standalone(a) => {
            roles::standalone::run(StandaloneConfig { data_dir: a.dir.data_dir, serve: a.serve.role()? })
        }
        Command::Writer(mut a) => {
            a.build.default_source_roots(&a.dir.data_dir);
            roles::writer::run(a.config()?)
        }
        Command::Replica(a) => roles::replica::run(a.config()?),
    }
}

impl TokenArgs {
    /// The token from --token-file (trailing newline ignored) or --token.
    pub fn read(&self) -> Result<Option<String>> {
        match (&self.token_file, &self.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(Error::io(
                        format!("reading the token file {}", path.display()),
                        std::io::Error::other("the file is empty"),
                    ));
                }
                Ok(Some(token))
            }
            (None, Some(token)) if token.trim().is_empty() => Err(Error::Usage {
                flag: "--token".into(),
                value: "(empty)".into(),
                reason: "an empty bearer token would let anyone in; give a token or none".into(),
            }),
            (None, Some(token)) => Ok(Some(token.trim().to_string())),
            (None, None) => Ok(None),
        }
    }
}

/// The bytes of a PEM file (certificate, key, CA).
/// The value of `flag`, which names a snapshot by its sha256: 64 lowercase hex digits, or a
/// usage error naming the flag (the value cut to 80 characters: it may be anything).
fn check_sha256(flag: &str, value: Option<&str>) -> Result<()> {
    match value.filter(|s| !quiver_api::types::is_sha256_hex(s)) {
        Some(bad) => Err(Error::Usage {
            flag: flag.into(),
            value: bad.chars().take(80).collect(),
            reason: "must be a sha256: 64 lowercase hex digits".into(),
        }),
        None => Ok(()),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// What a client sends: the token, and the CA it trusts for `https://` targets.
fn client_options(token: Option<String>, tls_ca: Option<&Path>) -> Result<ClientOptions> {
    Ok(ClientOptions { token, tls_ca: tls_ca.map(read_pem).transpose()?, ..Default::default() })
}

impl ServeArgs {
    pub fn role(&self) -> Result<ServeRole> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read_pem(cert)?, read_pem(key)?)),
            _ => None,
        };
        let config = ServeConfig {
            max_connection_age: self.max_connection_age_secs.map(Duration::from_secs),
            max_message_bytes: self.max_message_bytes,
            token: self.token.read()?,
            search_without_token: self.search_without_token,
            tls,
            drain_delay: Duration::from_secs(self.drain_delay_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            max_in_flight: self.max_in_flight,
            console_hosts: self.console_hosts.clone(),
        };
        Ok(ServeRole { listen: self.listen, http_listen: self.http_listen, config, insecure: self.insecure })
    }
}

impl RemoteArgs {
    /// The job's target, for `collection`.
    fn remote(&self, target: &str, collection: &str) -> Result<Remote> {
        Ok(Remote {
            target: target.to_string(),
            collection: collection.to_string(),
            client: client_options(self.token.read()?, self.tls_ca.as_deref())?,
            result_file: self.result_file.clone(),
        })
    }
}

impl WriterArgs {
    fn config(&self) -> Result<WriterConfig> {
        Ok(WriterConfig {
            data_dir: self.dir.data_dir.clone(),
            build: self.build.options(&self.collection),
            source: self.source.clone(),
            read: self.build.read_options(),
            spool: SpoolLimits { max_stream_bytes: self.max_stream_bytes, max_spool_bytes: self.max_spool_bytes },
            pace: WritePace {
                idle: Duration::from_secs(self.write_idle_secs),
                min_bytes_per_sec: self.write_min_bytes_per_sec,
            },
            serve: self.serve.role()?,
            snapshot_store: self.snapshot_store.clone(),
            restore_from: self.restore_from.clone(),
        })
    }
}

impl ReplicaArgs {
    fn config(&self) -> Result<ReplicaConfig> {
        let serve = self.serve.role()?;
        // The sources want the token this replica serves with (read once: a rotated Secret
        // must not give the two different values).
        let client = client_options(serve.config.token.clone(), self.tls_ca.as_deref())?;
        check_sha256("--snapshot-sha256", self.snapshot_sha256.as_deref())?;
        Ok(ReplicaConfig {
            data_dir: self.dir.data_dir.clone(),
            collection: self.collection.clone(),
            snapshot_from: self.snapshot_from.clone(),
            fetch: FetchOptions {
                client,
                bytes_per_sec: self.fetch_bytes_per_sec,
                timeout: Duration::from_secs(self.fetch_timeout_secs),
                attempt_timeout: Duration::from_secs(self.fetch_attempt_timeout_secs),
                stall_timeout: Duration::from_secs(self.fetch_stall_timeout_secs),
                progress_every: Duration::from_secs(self.fetch_progress_interval_secs.max(1)),
                pinned: self.snapshot_sha256.clone(),
            },
            warmup_max_queries: self.warmup_max_queries,
            store_credentials: Credentials::allowing_ambient(self.ambient_credentials),
            serve,
        })
    }
}

impl BuildArgs {
    /// Build settings for a collection called `name`.
    pub fn options(&self, name: &str) -> BuildOptions {
        let mut options = BuildOptions::new(name, self.distance);
        options.dimensions = self.dimensions;
        options.index = match self.index {
            Backend::Arroy => IndexParams::arroy(self.n_trees),
            Backend::Hannoy => IndexParams::hannoy(self.ef_construction),
        };
        options.index.lists = self.lists;
        options.index.arroy_vectors = self.arroy_vectors;
        options.index.shortlist = self.shortlist;
        if let Some(mib) = self.index_memory_mib {
            options.index_memory = Some(mib << 20);
        }
        if let Some(quality) = self.quality {
            options.search = SearchDefaults { strategy: self.strategy, quality, probes: self.probes };
            options.target_recall = None;
        } else {
            options.target_recall = Some(self.target_recall);
        }
        options.duplicates = match self.on_duplicate {
            OnDuplicate::Reject => Duplicates::Reject,
            OnDuplicate::LastWins => Duplicates::LastWins,
        };
        options.batch_rows = self.batch_rows.max(1);
        options
    }

    /// When no --source-root was given: the data directory and the working directory. A URL
    /// source that must be downloaded before it is read goes to the data directory.
    pub fn default_source_roots(&mut self, data_dir: &Path) {
        self.scratch_dir = Some(data_dir.to_path_buf());
        if self.source_root.is_empty() {
            self.source_root.push(data_dir.to_path_buf());
            // A container's working directory is often `/`, which would confine nothing.
            self.source_root.extend(std::env::current_dir().ok().filter(|d| d.parent().is_some()));
        }
    }

    /// How to read --source; local paths are confined to --source-root (the working directory
    /// when neither it nor [`BuildArgs::default_source_roots`] set any).
    pub fn read_options(&self) -> ReadOptions {
        let source_roots = if self.source_root.is_empty() {
            std::env::current_dir().into_iter().collect()
        } else {
            self.source_root.clone()
        };
        ReadOptions {
            format: self.format,
            id_offset: self.id_offset,
            partition: self.partition.clone(),
            source_roots,
            allow_link_local: false,
            credentials: Credentials::allowing_ambient(self.ambient_credentials),
            columns: ParquetColumns {
                id: self.id_column.clone(),
                vector: self.vector_column.clone(),
                partition: self.partition_column.clone(),
                tags: self.tags_column.clone(),
            },
            scratch_dir: self.scratch_dir.clone(),
        }
    }
}

impl GateArgs {
    pub fn options(&self) -> Result<VerifyOptions> {
        let queries = match &self.queries {
            Some(uri) => import::read_vectors(uri)?,
            None => Vec::new(),
        };
        // Not a clap `requires`: in a pod the URL comes from the environment (a Secret).
        let count_query = match (&self.expected_count_query, &self.source_database_url) {
            (Some(sql), Some(url)) => {
                Some(CountQuery::new(sql, &url.0)?.with_connect_attempts(self.source_database_attempts))
            }
            (Some(_), None) => {
                return Err(Error::Usage {
                    flag: "--source-database-url".into(),
                    value: "(none)".into(),
                    reason:
                        "--expected-count-query needs the database: --source-database-url or QUIVER_SOURCE_DATABASE_URL"
                            .into(),
                });
            }
            (None, _) => None,
        };
        Ok(VerifyOptions {
            expected_count: self.expected_count,
            count_query,
            min_recall: self.min_recall,
            max_p99_ms: self.max_p99_ms,
            k: self.k,
            queries,
            sample: self.sample,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::args::TokenArgs;

    #[test]
    fn an_empty_token_is_refused() {
        let empty = TokenArgs { token_file: None, token: Some(" \n".into()) };
        assert!(empty.read().unwrap_err().to_string().contains("--token (empty)"));
        assert_eq!(TokenArgs { token_file: None, token: Some("t0k\n".into()) }.read().unwrap().as_deref(), Some("t0k"));
    }
}
