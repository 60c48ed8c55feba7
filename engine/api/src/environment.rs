//! Environment variables the operator and the engine agree on. First those a quiver process
//! takes its object-store credentials and endpoint from: the names `object_store` reads for
//! each cloud. The operator passes exactly these keys of a collection's credentials Secret to
//! the writer, and no others, so a Secret cannot set any other part of the process's
//! configuration (a `QUIVER_*` flag, a proxy). Then the replica's snapshot pin.

/// For `s3://` (AWS, or an S3 on premises through the endpoint).
pub const AWS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_SKIP_SIGNATURE",
];

/// For `gs://`: a service account's JSON key, as its content.
pub const GOOGLE: &[&str] = &["GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_SKIP_SIGNATURE"];

/// For `az://` and `abfs(s)://`: an account key, a SAS, or a service principal.
pub const AZURE: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_ENDPOINT",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_SKIP_SIGNATURE",
];

/// Every object-store variable, in the order above.
pub fn object_store_credentials() -> impl Iterator<Item = &'static str> {
    AWS.iter().chain(GOOGLE).chain(AZURE).copied()
}

/// A replica's `--snapshot-sha256`: the operator pins replicas through the environment, not a
/// flag, so an engine older than the pin (an image rolled back) ignores it instead of refusing
/// an unknown flag.
pub const SNAPSHOT_SHA256: &str = "QUIVER_SNAPSHOT_SHA256";
