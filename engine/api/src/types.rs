//! Plain data: the settings of a collection (distance, index, search defaults) and the
//! verification report, shared by the engine's manifest, its gRPC answers and the operator's
//! CRDs. Leaves: nothing here depends on anything else of quiver.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How two vectors are compared. Smaller distances are closer for every metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `1 - cos(a, b)`; vectors are L2-normalised on import.
    Cosine,
    /// `|a - b|` (reported), ranked by its square.
    Euclidean,
    /// `-(a . b)`: the largest inner product is the nearest.
    Dot,
    /// Cosine, but arroy stores and compares 1-bit quantized vectors in its trees; the
    /// collection keeps float32 vectors so results are re-ranked exactly.
    BinaryQuantizedCosine,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Cosine, Metric::Euclidean, Metric::Dot, Metric::BinaryQuantizedCosine];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
            Metric::Dot => "dot",
            Metric::BinaryQuantizedCosine => "binary_quantized_cosine",
        }
    }

    /// Whether stored and query vectors are L2-normalised (so cosine becomes a dot product).
    pub fn normalizes(self) -> bool {
        matches!(self, Metric::Cosine | Metric::BinaryQuantizedCosine)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized = s.to_ascii_lowercase().replace('-', "_");
        match normalized.as_str() {
            "cosine" => Ok(Metric::Cosine),
            "euclidean" | "l2" => Ok(Metric::Euclidean),
            "dot" | "dot_product" | "ip" => Ok(Metric::Dot),
            "binary_quantized_cosine" | "bq_cosine" => Ok(Metric::BinaryQuantizedCosine),
            _ => {
                Err(format!("unknown distance {s:?}: expected one of cosine, euclidean, dot, binary_quantized_cosine"))
            }
        }
    }
}

/// The durable ANN index a collection is built with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// arroy: random-projection trees over LMDB.
    #[default]
    Arroy,
    /// hannoy: an HNSW graph over LMDB (M = 16 links per node, 32 on layer 0); no dot product.
    Hannoy,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Arroy => "arroy",
            Backend::Hannoy => "hannoy",
        }
    }
}

/// arroy trees per partition when a build does not say: none, chosen by measurement
/// (BENCHMARKS.md, "How many arroy trees" and "No arroy trees by default"). The search path
/// (the sign-code scan of the coarse lists) and the verification never walk a tree, so a
/// default build spends nothing on them; a build that asks for trees gets the `index` strategy.
pub const DEFAULT_ARROY_TREES: usize = 0;

/// The durable index built at seal time, with its build parameters. Shared by the engine's
/// manifest and the operator's `VectorCollection` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexParams {
    #[serde(default)]
    pub backend: Backend,
    /// arroy trees per partition; absent: 0 (`DEFAULT_ARROY_TREES`), and with none the build
    /// writes no arroy index at all. Trees answer the `index` strategy only (calibration then
    /// tries it beside the sign-code scan); the default search path and the verification never
    /// use them. Measured: at 200k items calibration chose the sign-code scan at 1, 4, 16 and 64
    /// trees, and 64 trees took 14x one tree's build; arroy's own choice (trees until their
    /// nodes outnumber the items) did not finish within 20 minutes at 1M (BENCHMARKS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10000))]
    pub n_trees: Option<usize>,
    /// hannoy build quality (candidate list size while linking); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 8, max = 2000))]
    pub ef_construction: Option<usize>,
    /// Coarse lists (k-means centroids) per partition that the sign-code scan probes instead
    /// of scanning every code; absent: about sqrt(items) for partitions of 20,000 items or
    /// more, none below; 0: none (every query scans the whole partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000000))]
    pub lists: Option<usize>,
    /// How arroy keeps each vector it splits its trees on, when the build makes trees (with
    /// none, arroy keeps nothing). `binary` (the default for cosine and
    /// euclidean): one bit per dimension, since arroy only shortlists candidates that are
    /// re-ranked with the float32 vectors the collection stores anyway; `full`: a float32 copy
    /// (the vectors twice on disk). Dot products always keep `full` (arroy has no binary form
    /// of them). A build records what it did in the manifest; a manifest without the field
    /// (built before it existed) holds `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arroy_vectors: Option<ArroyVectors>,
    /// How the sign-code scan re-ranks its shortlist (the `quality` nearest codes). `rabitq`
    /// (the default): each shortlisted item's distance is first estimated from its RaBitQ code
    /// (built in memory beside the sign codes: a second code of the same size and 16 bytes per
    /// item), and only the items whose estimate's error bound lets them into the top k are
    /// re-ranked with float32 vectors (at 200k x 384, 9-12 % of a 200-item shortlist, 3.5-5 %
    /// of a 1000-item one); `scalar8`: the same with 8-bit scalar codes (one byte per dimension
    /// per item in memory, six times RaBitQ's at 384 dimensions, and a bound that holds for
    /// every item); `hamming`:
    /// every shortlisted item is re-ranked. A build records what it did in the manifest; a
    /// manifest without the field (built before it existed) holds `hamming`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortlist: Option<Shortlist>,
}

/// How the sign-code scan re-ranks its shortlist (see [`IndexParams::shortlist`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Shortlist {
    /// Every shortlisted item, exactly.
    Hamming,
    /// Only the items RaBitQ estimates cannot rule out.
    Rabitq,
    /// Only the items 8-bit scalar codes cannot rule out (a bound that holds for every item;
    /// one byte per dimension per item in memory). An engine older than it cannot open a
    /// collection built with it.
    Scalar8,
}

impl Shortlist {
    pub fn as_str(self) -> &'static str {
        match self {
            Shortlist::Hamming => "hamming",
            Shortlist::Rabitq => "rabitq",
            Shortlist::Scalar8 => "scalar8",
        }
    }
}

/// What a build gives the sign-code scan when its parameters do not say: at 1M x 384 it
/// answered the calibrated default (rerank 1000, probes 15) in 0.295 ms where `hamming` took
/// 0.64 ms, at the same recall (BENCHMARKS.md, "RaBitQ shortlist").
pub const DEFAULT_SHORTLIST: Shortlist = Shortlist::Rabitq;

/// How arroy keeps the vectors of its trees (see [`IndexParams::arroy_vectors`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ArroyVectors {
    /// One bit per dimension.
    Binary,
    /// A float32 copy.
    Full,
}

impl ArroyVectors {
    pub fn as_str(self) -> &'static str {
        match self {
            ArroyVectors::Binary => "binary",
            ArroyVectors::Full => "full",
        }
    }
}

impl IndexParams {
    /// What a build of `metric` with these parameters stores in arroy: the asked form (binary
    /// when not asked), full for dot products, which arroy cannot binarize; binary for the
    /// binary-quantized metric, whose vectors are binary already.
    pub fn arroy_vectors_built(&self, metric: Metric) -> ArroyVectors {
        match metric {
            Metric::Dot => ArroyVectors::Full,
            Metric::BinaryQuantizedCosine => ArroyVectors::Binary,
            Metric::Cosine | Metric::Euclidean => self.arroy_vectors.unwrap_or(ArroyVectors::Binary),
        }
    }

    /// What a sealed collection's arroy holds, from its manifest.
    pub fn arroy_vectors_stored(&self, metric: Metric) -> ArroyVectors {
        match metric {
            Metric::BinaryQuantizedCosine => ArroyVectors::Binary,
            _ => self.arroy_vectors.unwrap_or(ArroyVectors::Full),
        }
    }

    /// How a build of these parameters re-ranks the sign-code shortlist.
    pub fn shortlist_built(&self) -> Shortlist {
        self.shortlist.unwrap_or(DEFAULT_SHORTLIST)
    }

    /// How a sealed collection's sign-code scan re-ranks, from its manifest.
    pub fn shortlist_stored(&self) -> Shortlist {
        self.shortlist.unwrap_or(Shortlist::Hamming)
    }

    /// The number of trees a build of these parameters gives each arroy index.
    pub fn arroy_trees_built(&self) -> usize {
        self.n_trees.unwrap_or(DEFAULT_ARROY_TREES)
    }

    /// Whether a build of these parameters makes a durable index the `index` strategy can ask:
    /// a hannoy graph, or at least one arroy tree.
    pub fn durable_index_built(&self) -> bool {
        self.backend == Backend::Hannoy || self.arroy_trees_built() > 0
    }

    /// Whether a sealed collection holds a durable index the `index` strategy can ask, from
    /// its manifest: a hannoy graph, or arroy trees (a manifest without a count was built
    /// before builds recorded it, with arroy's own forest).
    pub fn durable_index_stored(&self) -> bool {
        self.backend == Backend::Hannoy || self.n_trees != Some(0)
    }

    pub fn arroy(n_trees: Option<usize>) -> Self {
        IndexParams { backend: Backend::Arroy, n_trees, ..Default::default() }
    }

    pub fn hannoy(ef_construction: usize) -> Self {
        IndexParams { backend: Backend::Hannoy, ef_construction: Some(ef_construction), ..Default::default() }
    }
}

/// Which code path answers a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Brute force over float32 vectors; the reference for recall.
    Exact,
    /// The collection's durable ANN index (arroy or hannoy).
    Index,
    /// 1-bit sign codes scanned from memory, then the best candidates re-ranked exactly.
    #[serde(rename = "signscan")]
    SignScan,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Exact => "exact",
            Strategy::Index => "index",
            Strategy::SignScan => "signscan",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(Strategy::Exact),
            "index" | "arroy" | "hannoy" => Ok(Strategy::Index),
            "signscan" => Ok(Strategy::SignScan),
            other => Err(format!("unknown strategy {other:?}: expected exact, index or signscan")),
        }
    }
}

/// The search settings a collection answers with when a request does not say otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SearchDefaults {
    pub strategy: Strategy,
    /// The quality knob: re-ranked candidates for `signscan`; `search_k` for arroy (candidates
    /// re-ranked for its binary-quantized distance); `ef` for hannoy; ignored by `exact`.
    pub quality: usize,
    /// Coarse lists the sign-code scan probes per partition; 0 (and absent) scans them all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probes: usize,
}

/// As reports and `quiver inspect` show it: `signscan quality=100 probes=32`.
impl fmt::Display for SearchDefaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} quality={}", self.strategy, self.quality)?;
        if self.probes > 0 {
            write!(f, " probes={}", self.probes)?;
        }
        Ok(())
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for SearchDefaults {
    fn default() -> Self {
        SearchDefaults { strategy: Strategy::SignScan, quality: 200, probes: 0 }
    }
}

/// One gate a flip waits for (count, recall, latency): what was measured against what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    pub measured: f64,
    /// `>=`, `<=` or `==`.
    pub comparison: String,
    pub threshold: f64,
    pub passed: bool,
    /// How far from the threshold, in the gate's unit (negative = short of it).
    pub margin: f64,
    /// Where the threshold came from when not from the spec, e.g. the expected-count query
    /// and its database (without credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_from: Option<String>,
    /// Why the gate could not be measured (its source database did not answer, say): the gate
    /// fails, and `threshold` and `margin` mean nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether measuring again may succeed (the source database did not answer in time), as
    /// opposed to an error that will recur (the query is wrong).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

/// Whether `s` is a sha256 as snapshots name theirs: 64 lowercase hex digits. The engine keeps
/// nothing else from a store or a flag, and the operator passes nothing else to a replica.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `measured` passes `comparison` (`>=`, `<=`, or anything else for `==`) against
/// `threshold`, and by what margin (negative when it fails). Every gate shown anywhere, by the
/// engine or the operator's console, is judged here.
pub fn judge(measured: f64, comparison: &str, threshold: f64) -> (bool, f64) {
    match comparison {
        ">=" => (measured >= threshold, measured - threshold),
        "<=" => (measured <= threshold, threshold - measured),
        // Equal is a margin of 0, not -0 (which JSON would show).
        _ if measured == threshold => (true, 0.0),
        _ => (false, -(measured - threshold).abs()),
    }
}

impl Gate {
    pub fn new(name: &str, measured: f64, comparison: &str, threshold: f64) -> Gate {
        let (passed, margin) = judge(measured, comparison, threshold);
        Gate {
            name: name.into(),
            measured,
            comparison: comparison.into(),
            threshold,
            passed,
            margin,
            threshold_from: None,
            error: None,
            retry: false,
        }
    }

    /// A gate whose threshold could not be had: it fails, with `error` as the reason.
    pub fn unmeasured(name: &str, measured: f64, comparison: &str, error: String, retry: bool) -> Gate {
        Gate { passed: false, margin: 0.0, error: Some(error), retry, ..Gate::new(name, measured, comparison, 0.0) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub collection: String,
    pub passed: bool,
    /// Read also as `checks`, as reports written before the field was renamed have it.
    #[serde(alias = "checks")]
    pub gates: Vec<Gate>,
    /// The search setting verified, e.g. `signscan quality=200`.
    pub setting: String,
    pub queries: usize,
    pub k: usize,
}

impl VerifyReport {
    /// The failed gates, one line each: what was measured against what.
    pub fn failures(&self) -> Vec<String> {
        self.gates
            .iter()
            .filter(|c| !c.passed)
            .map(|c| match &c.error {
                Some(error) => format!("{}: not measured: {error}", c.name),
                None => format!(
                    "{}: measured {} {} {} failed (off by {})",
                    c.name, c.measured, c.comparison, c.threshold, -c.margin
                ),
            })
            .collect()
    }
}
