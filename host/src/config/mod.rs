//! The host's configuration: one TOML file, serde types with named defaults,
//! and [`Config::validate`], which checks everything at once without I/O and
//! reports every problem it finds.
//!
//! Relative paths are resolved against the config file's directory by
//! [`Config::load`].

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;

mod admin;
mod completeness;
mod env;
mod store;

pub use admin::{shadow_share_problem, AdminConfig, AdminRole, AdminToken, MIN_TOKEN_CHARS};
pub use completeness::CompletenessConfig;
pub use store::{Consistency, ScyllaConfig, ScyllaRole, StoreConfig, TileCacheConfig};

/// The whole host configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this pipeline (positions and dead letters are kept under it).
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Where raw records come from.
    pub source: SourceConfig,
    /// The parser plugin: raw bytes to events. It reads every topic no
    /// `[[parsers]]` entry claims.
    pub parser: PluginConfig,
    /// More parsers, each for the topics it lists (`topics = [...]`), so
    /// that event types from different topics never share one parser.
    #[serde(default)]
    pub parsers: Vec<PluginConfig>,
    /// Feature plugins: events to feature updates. At least one.
    pub features: Vec<PluginConfig>,
    /// The late-data handler plugin; without one, late events are accepted.
    #[serde(default)]
    pub late: Option<PluginConfig>,
    #[serde(default)]
    pub watermark: WatermarkConfig,
    /// When the tile output's event-time partitions count as complete.
    #[serde(default)]
    pub completeness: CompletenessConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// Where events the late handler routes aside are written.
    #[serde(default)]
    pub side_output: SideOutputConfig,
    /// Engine-wide plugin runtime settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// The HTTP serving API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The admin API: plugin registry, tokens, limits.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Outputs that receive the pipeline's events (after late-data routing),
    /// e.g. sort-merge-bucketed Avro files by hour.
    #[serde(default)]
    pub outputs: Vec<OutputConfig>,
}

/// One enum variant per output kind.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConfig {
    /// Sort-merge-bucket Avro files in the layout Beam/Scio SMB readers
    /// read, partitioned by event time (see `sinks/smb`).
    Smb(SmbOutputConfig),
}

impl OutputConfig {
    pub fn name(&self) -> &str {
        match self {
            OutputConfig::Smb(c) => &c.name,
        }
    }
}

/// A sort-merge-bucket output.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmbOutputConfig {
    /// Names the output in logs, dead letters and its checkpoint state.
    pub name: String,
    /// Event types written (by name); all when empty.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// The Avro record schema (JSON). Fields are filled by name from the
    /// event: `event_time`, `ingestion_time`, `event_type`, `payload`, or
    /// an event column. Exactly one of `schema` and `schema_file`.
    #[serde(default)]
    pub schema: Option<String>,
    /// A file holding the schema (`.avsc`).
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    /// The string field records are bucketed and sorted by (a top-level field).
    pub key_field: String,
    /// Number of buckets (a power of two).
    pub buckets: u32,
    /// Files per bucket, for skewed keys.
    #[serde(default = "default_shards")]
    pub shards: u32,
    #[serde(default)]
    pub hash: crate::sinks::smb::HashType,
    #[serde(default)]
    pub codec: AvroCodec,
    /// DEFLATE level (0-9) when `codec = "deflate"`.
    #[serde(default = "default_deflate_level")]
    pub deflate_level: u8,
    #[serde(default)]
    pub granularity: crate::sinks::smb::Granularity,
    /// A partition is committed once the watermark passes its end plus this.
    /// Events for it after that are written as a late-data sibling directory.
    #[serde(default = "zero_duration", with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Late events for a partition already committed are collected into
    /// one late-data sibling, committed once the watermark has moved this
    /// much further (event time): a few amendments per partition, not one
    /// per checkpoint.
    #[serde(default = "default_amend_every", with = "humantime_serde")]
    pub amend_every: Duration,
    /// Bytes of records the output holds in memory (over all open
    /// partitions) before sorted runs spill to `work_dir`.
    #[serde(default = "default_smb_memory_budget")]
    pub memory_budget_bytes: usize,
    /// Threads that sort and compress a partition's bucket files when it
    /// is committed; 0 (the default) uses every core.
    #[serde(default)]
    pub write_threads: usize,
    /// A local directory for the output. Exactly one of `path` and `s3`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// An S3-compatible location for the output.
    #[serde(default)]
    pub s3: Option<crate::sinks::smb::S3Location>,
    /// Local space for the output's journal, spilled runs and (for S3)
    /// staging; must survive restarts. Default: `<path>/.tessera` for local
    /// outputs, `.tessera/smb/<name>` beside the config for S3 ones.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AvroCodec {
    #[default]
    Deflate,
    Null,
}

fn default_shards() -> u32 {
    1
}
fn default_deflate_level() -> u8 {
    6
}
fn zero_duration() -> Duration {
    Duration::ZERO
}
fn default_amend_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_smb_memory_budget() -> usize {
    256 << 20
}

impl SmbOutputConfig {
    /// The writer's spec, given the schema text.
    pub fn spec(&self, schema_json: String) -> crate::sinks::smb::SmbSpec {
        use crate::sinks::smb::avro::Codec;
        crate::sinks::smb::SmbSpec {
            schema_json,
            key_field: self.key_field.clone(),
            num_buckets: self.buckets,
            num_shards: self.shards,
            hash_type: self.hash,
            codec: match self.codec {
                AvroCodec::Deflate => Codec::Deflate(self.deflate_level),
                AvroCodec::Null => Codec::Null,
            },
            memory_budget: self.memory_budget_bytes,
            write_threads: self.write_threads,
        }
    }

    /// The work directory, defaulted (see the field).
    pub fn work_dir(&self) -> PathBuf {
        match (&self.work_dir, &self.path) {
            (Some(w), _) => w.clone(),
            (None, Some(p)) => p.join(".tessera"),
            (None, None) => PathBuf::from(".tessera/smb").join(&self.name),
        }
    }

    /// This output as one host instance of a pipeline writes it: with
    /// `pipeline.instance` set, under `instance=<name>` of its path (or S3
    /// prefix) and of its work directory, so several instances over one
    /// location never write the same directory or commit log. Readers take
    /// the partitions of every instance together.
    pub fn for_instance(&self, instance: &str) -> SmbOutputConfig {
        let mut c = self.clone();
        if instance.is_empty() {
            return c;
        }
        let sub = format!("instance={instance}");
        c.work_dir = Some(c.work_dir().join(&sub));
        if let Some(p) = &mut c.path {
            *p = p.join(&sub);
        }
        if let Some(s3) = &mut c.s3 {
            let prefix = s3.prefix.trim_matches('/');
            s3.prefix = if prefix.is_empty() {
                sub
            } else {
                format!("{prefix}/{sub}")
            };
        }
        c
    }

    /// Problems with this output's settings (no I/O: a schema file is
    /// checked when the pipeline opens it).
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let at = format!("output `{}`", self.name);
        if !valid_name(&self.name) {
            p.push(format!(
                "{at}: name must be non-empty letters, digits, - or _"
            ));
        }
        if self.name == crate::pipeline::ledger::TILES_OUTPUT {
            p.push(format!(
                "{at}: the name is the tile output's in the change log; choose another"
            ));
        }
        if self.path.is_some() == self.s3.is_some() {
            p.push(format!("{at}: set exactly one of `path` and `s3`"));
        }
        if let Err(e) = crate::sinks::smb::BucketMetadata::avro(
            self.buckets,
            self.shards,
            self.hash,
            &self.key_field,
        ) {
            p.push(format!("{at}: {e}"));
        }
        match (&self.schema, &self.schema_file) {
            (Some(_), Some(_)) | (None, None) => p.push(format!(
                "{at}: set exactly one of `schema` and `schema_file`"
            )),
            (Some(schema), None) => {
                if let Err(errors) = crate::sinks::smb::EventEncoder::new(schema, &self.key_field) {
                    p.extend(errors.into_iter().map(|e| format!("{at}: {e}")));
                }
            }
            (None, Some(_)) => {}
        }
        if self.deflate_level > 9 {
            p.push(format!("{at}: deflate_level must be 0 to 9"));
        }
        if self.memory_budget_bytes < (1 << 20) {
            p.push(format!("{at}: memory_budget_bytes must be at least 1 MiB"));
        }
        if self.event_types.iter().any(String::is_empty) {
            p.push(format!("{at}: event_types must not hold empty names"));
        }
        p
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default = "default_pipeline_name")]
    pub name: String,
    /// Raw records per plugin call.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Tiles and source positions are committed together after this many events.
    #[serde(default = "default_checkpoint_events")]
    pub checkpoint_events: u64,
    /// ... or after this much time, whichever comes first.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// This host's name among several running the pipeline in one consumer
    /// group over a shared (CQL) store: each instance keeps its own tile
    /// partials, dead-letter and output state. Empty: a single host.
    #[serde(default)]
    pub instance: String,
}

fn default_pipeline_name() -> String {
    "default".into()
}
pub fn default_batch_size() -> usize {
    1024
}
fn default_checkpoint_events() -> u64 {
    500_000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: default_pipeline_name(),
            batch_size: default_batch_size(),
            checkpoint_events: default_checkpoint_events(),
            checkpoint_interval: default_checkpoint_interval(),
            instance: String::new(),
        }
    }
}

/// One enum variant per source kind.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// NDJSON or Avro object container files: one file, or every matching
    /// file of a directory in name order.
    File {
        path: PathBuf,
        #[serde(default)]
        format: FileFormat,
    },
    /// Kafka-API topics (Apache Kafka, Redpanda) read in a consumer group.
    Kafka {
        topics: Vec<String>,
        /// The consumer group; defaults to the pipeline name.
        #[serde(default)]
        group_id: Option<String>,
        /// librdkafka properties, passed through unchanged
        /// (`bootstrap.servers`, `security.protocol`, `sasl.*`, ...).
        #[serde(default)]
        properties: std::collections::BTreeMap<String, String>,
        /// The longest a read waits for records before the pipeline gets
        /// to checkpoint and check for a stop.
        #[serde(default = "default_poll_timeout", with = "humantime_serde")]
        poll_timeout: Duration,
        /// End the run once no record has arrived for this long (catch-up
        /// and backfill jobs, tests); unset: run until stopped.
        #[serde(default, with = "opt_humantime_serde")]
        idle_exit: Option<Duration>,
        /// How much lower (Linux nice, 0 to 19) the threads that fetch and
        /// hand over records (librdkafka's and the consumer thread) run
        /// than the pipeline thread: they read ahead, the pipeline thread
        /// is the critical path, and on a machine with few cores they
        /// otherwise take its turns (measured on 2 cores: +10% records/s at
        /// 5). 0 leaves them as they are.
        #[serde(default = "default_consumer_nice")]
        consumer_nice: i32,
    },
}

impl SourceConfig {
    /// The kind, as in `type = "..."`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::File { .. } => "file",
            SourceConfig::Kafka { .. } => "kafka",
        }
    }
}

fn default_poll_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_consumer_nice() -> i32 {
    5
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// By extension: `.avro` is Avro, anything else NDJSON.
    #[default]
    Auto,
    Ndjson,
    Avro,
}

/// A plugin: the component, its config and its quotas.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Name in logs, metrics and dead letters.
    pub name: String,
    /// The compiled component (`.wasm`).
    pub path: PathBuf,
    /// Version label; defaults to the first 12 hex digits of the component's SHA-256.
    #[serde(default)]
    pub version: Option<String>,
    /// Passed to the plugin's `init` as JSON text.
    #[serde(default = "default_plugin_config")]
    pub config: toml::Value,
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default)]
    pub quarantine: QuarantinePolicy,
    /// `[[parsers]]` only: the topics whose records this parser reads.
    #[serde(default)]
    pub topics: Vec<String>,
    /// `[[features]]` only: the event types (as parsers name them) this
    /// plugin receives; every type when empty.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// `[[features]]` only: how far behind the pipeline watermark an event
    /// may be and still count for this plugin's features without asking the
    /// late handler. An event later than that (for every plugin receiving
    /// it, the smallest) goes to `[late]`; what the handler drops or
    /// side-outputs still counts for plugins whose allowance it is within.
    #[serde(default = "zero_duration", with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

fn default_plugin_config() -> toml::Value {
    toml::Value::Table(Default::default())
}

impl PluginConfig {
    /// The plugin's config as JSON text (empty object when none was given).
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// Per-plugin resource limits, applied to every call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Maximum linear memory of the plugin instance.
    #[serde(default = "default_max_memory")]
    pub max_memory_bytes: usize,
    /// CPU budget per call, in wasmtime fuel units (~one per wasm instruction).
    /// Needs `runtime.fuel = true`.
    #[serde(default = "default_fuel")]
    pub fuel_per_call: u64,
    /// Wall-clock limit per call (epoch interruption).
    #[serde(default = "default_wall_time", with = "humantime_serde")]
    pub wall_time_per_call: Duration,
    /// Maximum records (events, updates, decisions) one call may return.
    #[serde(default = "default_max_output_records")]
    pub max_output_records: usize,
    /// Maximum bytes one call may return.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
}

fn default_max_memory() -> usize {
    64 << 20
}
fn default_fuel() -> u64 {
    2_000_000_000
}
fn default_wall_time() -> Duration {
    Duration::from_secs(1)
}
fn default_max_output_records() -> usize {
    1 << 20
}
fn default_max_output_bytes() -> usize {
    32 << 20
}

impl Quotas {
    /// What is wrong with these quotas (empty when nothing): checked for
    /// the config and for a quota change over the admin API alike.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_memory_bytes < (1 << 16) {
            problems.push("quotas.max_memory_bytes must be at least 65536".to_string());
        }
        if self.wall_time_per_call.is_zero() {
            problems.push("quotas.wall_time_per_call must be positive".to_string());
        }
        if self.fuel_per_call == 0 {
            problems.push("quotas.fuel_per_call must be positive".to_string());
        }
        if self.max_output_records == 0 || self.max_output_bytes == 0 {
            problems.push("output quotas must be positive".to_string());
        }
        problems
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_memory_bytes: default_max_memory(),
            fuel_per_call: default_fuel(),
            wall_time_per_call: default_wall_time(),
            max_output_records: default_max_output_records(),
            max_output_bytes: default_max_output_bytes(),
        }
    }
}

/// What happens to a plugin that keeps failing.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuarantinePolicy {
    /// Failed calls in a row (traps, timeouts, quota breaches, bad output)
    /// after which the plugin is quarantined.
    #[serde(default = "default_after_failures")]
    pub after_consecutive_failures: u32,
    #[serde(default)]
    pub action: QuarantineAction,
}

fn default_after_failures() -> u32 {
    20
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        QuarantinePolicy {
            after_consecutive_failures: default_after_failures(),
            action: QuarantineAction::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineAction {
    /// Stop the pipeline without committing the failing batch: a restart
    /// (after a fix) resumes from the last checkpoint.
    #[default]
    Halt,
    /// Keep running; every record the plugin would see goes to the dead letter.
    DeadLetter,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// The watermark trails the largest event time seen by this much.
    #[serde(default, with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// A source partition that delivered nothing for this long stops holding
    /// the pipeline watermark back (a stalled or dead producer must not stop
    /// completeness); it holds it again when it delivers. `0s`: never idle.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl WatermarkConfig {
    /// The watermark tracker these settings describe.
    pub fn tracker(&self) -> crate::window::Watermarks {
        crate::window::Watermarks::new(
            self.out_of_orderness.as_millis() as i64,
            (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
        )
    }
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            out_of_orderness: Duration::from_secs(5),
            idle_timeout: default_idle_timeout(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// NDJSON file that rejected records are appended to.
    #[serde(default = "default_dead_letter_path")]
    pub path: PathBuf,
}

fn default_dead_letter_path() -> PathBuf {
    PathBuf::from(".tessera/dead-letter.ndjson")
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            path: default_dead_letter_path(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SideOutputConfig {
    #[serde(default = "default_side_output_path")]
    pub path: PathBuf,
}

fn default_side_output_path() -> PathBuf {
    PathBuf::from(".tessera/side-output.ndjson")
}

impl Default for SideOutputConfig {
    fn default() -> Self {
        SideOutputConfig {
            path: default_side_output_path(),
        }
    }
}

/// Settings of the wasmtime engine shared by all plugins.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Meter fuel so `quotas.fuel_per_call` applies (costs some guest speed).
    #[serde(default = "default_true")]
    pub fuel: bool,
    /// Granularity of wall-time limits.
    #[serde(default = "default_epoch_tick", with = "humantime_serde")]
    pub epoch_tick: Duration,
    /// Where compiled components are cached between runs (none when unset).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}
fn default_epoch_tick() -> Duration {
    Duration::from_millis(5)
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            fuel: true,
            epoch_tick: default_epoch_tick(),
            cache_dir: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API listens on when serving.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most entities × features one batch call may ask for.
    #[serde(default = "default_max_batch_items")]
    pub max_batch_items: usize,
    /// The serving reads' own cache of tile runs.
    #[serde(default)]
    pub cache: ServingCacheConfig,
    /// Serve HTTPS (and the admin API too, unless it has a listener of its
    /// own) with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[api.tls]`, `[admin.tls]`: a PEM certificate chain (the server's first)
/// and its PEM private key (PKCS#8, PKCS#1 or SEC1).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_batch_items() -> usize {
    10_000
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            max_batch_items: default_max_batch_items(),
            cache: ServingCacheConfig::default(),
            tls: None,
        }
    }
}

/// `[api.cache]`: tile runs the serving API read, kept for `ttl`, so hot
/// entities cost one store read per `ttl` however often they are asked
/// for. An answer is at most `ttl` older than the store (which itself
/// trails the pipeline by up to one checkpoint). `max_tiles = 0` or
/// `ttl = "0s"` turns it off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServingCacheConfig {
    /// Most tiles held (about 100 bytes plus the entity each).
    #[serde(default = "default_serving_cache_tiles")]
    pub max_tiles: u64,
    #[serde(default = "default_serving_cache_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_serving_cache_tiles() -> u64 {
    200_000
}

fn default_serving_cache_ttl() -> Duration {
    Duration::from_secs(1)
}

impl Default for ServingCacheConfig {
    fn default() -> Self {
        ServingCacheConfig {
            max_tiles: default_serving_cache_tiles(),
            ttl: default_serving_cache_ttl(),
        }
    }
}

impl Config {
    /// Reads a config file, replaces `${VAR}` references with environment
    /// variables (`env.rs`), parses and validates it; relative paths become
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let text =
            env::interpolate(&text, |name| std::env::var(name).ok()).map_err(|problems| {
                ConfigError::Parse {
                    path: path.to_owned(),
                    message: problems.join("; "),
                }
            })?;
        let mut cfg = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes every relative path relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.source {
            SourceConfig::File { path, .. } => fix(path),
            SourceConfig::Kafka { .. } => {}
        }
        fix(&mut self.parser.path);
        for f in self.parsers.iter_mut().chain(&mut self.features) {
            fix(&mut f.path);
        }
        if let Some(l) = &mut self.late {
            fix(&mut l.path);
        }
        match &mut self.store {
            StoreConfig::Embedded { path } => fix(path),
            StoreConfig::Scylla(s) => s.resolve_paths(&fix),
        }
        fix(&mut self.dead_letter.path);
        fix(&mut self.side_output.path);
        fix(&mut self.completeness.change_log_path);
        if let Some(c) = &mut self.runtime.cache_dir {
            fix(c);
        }
        fix(&mut self.admin.registry_dir);
        for tls in [&mut self.api.tls, &mut self.admin.tls]
            .into_iter()
            .flatten()
        {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(f) = &mut self.admin.token_file {
            fix(f);
        }
        for o in &mut self.outputs {
            match o {
                OutputConfig::Smb(o) => {
                    o.work_dir = Some(o.work_dir());
                    for p in [&mut o.path, &mut o.schema_file, &mut o.work_dir]
                        .into_iter()
                        .flatten()
                    {
                        fix(p);
                    }
                }
            }
        }
    }

    /// Every plugin with the config table it sits in.
    fn plugins(&self) -> impl Iterator<Item = (&'static str, &PluginConfig)> {
        std::iter::once(("[parser]", &self.parser))
            .chain(self.parsers.iter().map(|p| ("[[parsers]]", p)))
            .chain(self.features.iter().map(|f| ("[[features]]", f)))
            .chain(self.late.iter().map(|l| ("[late]", l)))
    }

    /// Which parser reads which topic, which feature gets which event types.
    fn validate_routes(&self, problems: &mut Vec<String>) {
        let source_topics: Option<&Vec<String>> = match &self.source {
            SourceConfig::Kafka { topics, .. } => Some(topics),
            SourceConfig::File { .. } => None,
        };
        let mut claimed = std::collections::BTreeMap::new();
        for p in &self.parsers {
            if p.topics.is_empty() {
                problems.push(format!(
                    "[[parsers]] `{}` needs `topics` (the default parser is [parser])",
                    p.name
                ));
            }
            for t in &p.topics {
                if let Some(other) = claimed.insert(t.clone(), p.name.clone()) {
                    problems.push(format!(
                        "topic `{t}` is claimed by parsers `{other}` and `{}`",
                        p.name
                    ));
                }
                if source_topics.is_some_and(|ts| !ts.contains(t)) {
                    problems.push(format!(
                        "[[parsers]] `{}`: topic `{t}` is not one of source.topics",
                        p.name
                    ));
                }
            }
        }
        for (table, plugin) in self.plugins() {
            if table != "[[parsers]]" && !plugin.topics.is_empty() {
                problems.push(format!(
                    "{table} `{}`: `topics` applies to [[parsers]] only",
                    plugin.name
                ));
            }
            if table != "[[features]]" && !plugin.event_types.is_empty() {
                problems.push(format!(
                    "{table} `{}`: `event_types` applies to [[features]] only",
                    plugin.name
                ));
            }
            if table != "[[features]]" && !plugin.allowed_lateness.is_zero() {
                problems.push(format!(
                    "{table} `{}`: `allowed_lateness` applies to [[features]] only",
                    plugin.name
                ));
            }
        }
    }

    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.store.validate(&mut problems);
        self.admin.validate(&mut problems, &self.api.listen);
        if !(1..=1_000_000).contains(&self.api.max_batch_items) {
            problems.push(format!(
                "api.max_batch_items {} must be between 1 and 1000000",
                self.api.max_batch_items
            ));
        }
        if self.api.cache.ttl > Duration::from_secs(3600) {
            problems.push("api.cache.ttl must be at most 1h (answers may be that stale)".into());
        }
        let p = &self.pipeline;
        if !valid_name(&p.name) {
            problems.push(format!(
                "pipeline.name `{}` must be non-empty letters, digits, - or _",
                p.name
            ));
        }
        if !p.instance.is_empty() && !valid_name(&p.instance) {
            problems.push(format!(
                "pipeline.instance `{}` must be letters, digits, - or _",
                p.instance
            ));
        }
        if !(1..=65_536).contains(&p.batch_size) {
            problems.push(format!(
                "pipeline.batch_size {} must be between 1 and 65536",
                p.batch_size
            ));
        }
        if p.checkpoint_events == 0 {
            problems.push("pipeline.checkpoint_events must be at least 1".into());
        }
        if let SourceConfig::Kafka {
            topics,
            properties,
            poll_timeout,
            consumer_nice,
            ..
        } = &self.source
        {
            if !(0..=19).contains(consumer_nice) {
                problems.push(format!(
                    "source.consumer_nice must be 0 to 19 (got {consumer_nice})"
                ));
            }
            if topics.is_empty() || topics.iter().any(String::is_empty) {
                problems.push("source.topics must name at least one topic".into());
            }
            if !properties.contains_key("bootstrap.servers") {
                problems.push("source.properties needs `bootstrap.servers`".into());
            }
            for forced in ["group.id", "enable.auto.commit", "enable.auto.offset.store"] {
                if properties.contains_key(forced) {
                    problems.push(format!(
                        "source.properties: `{forced}` is set by Tessera (offsets are committed with the tiles; use source.group_id for the group)"
                    ));
                }
            }
            if poll_timeout.is_zero() || *poll_timeout > Duration::from_secs(10) {
                problems.push("source.poll_timeout must be between 1ms and 10s".into());
            }
        }
        if self.features.is_empty() {
            problems.push("at least one [[features]] plugin is required".into());
        }
        let mut names = std::collections::BTreeSet::new();
        self.validate_routes(&mut problems);
        for (table, plugin) in self.plugins() {
            if plugin.name.is_empty() {
                problems.push(format!("{table} plugin name must not be empty"));
            } else if !names.insert(plugin.name.clone()) {
                problems.push(format!("plugin name `{}` is used twice", plugin.name));
            }
            problems.extend(
                plugin
                    .quotas
                    .problems()
                    .into_iter()
                    .map(|p| format!("plugin `{}`: {p}", plugin.name)),
            );
            if plugin.quarantine.after_consecutive_failures == 0 {
                problems.push(format!(
                    "plugin `{}`: quarantine.after_consecutive_failures must be at least 1",
                    plugin.name
                ));
            }
        }
        if self.runtime.epoch_tick.is_zero() || self.runtime.epoch_tick > Duration::from_secs(1) {
            problems.push("runtime.epoch_tick must be between 1ns and 1s".into());
        }
        let mut outputs = std::collections::BTreeSet::new();
        for o in &self.outputs {
            if !outputs.insert(o.name()) {
                problems.push(format!("output name `{}` is used twice", o.name()));
            }
            match o {
                OutputConfig::Smb(o) => problems.extend(o.problems()),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// `Duration` fields written as `5s`, `250ms`, `1h` in TOML.
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

/// `Option<Duration>` fields written as `5s`, or left out.
mod opt_humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::humantime_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        source = { type = "file", path = "events.ndjson" }
        parser = { name = "json", path = "json_parser.wasm" }
        [[features]]
        name = "counter"
        path = "windowed_counter.wasm"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::parse(MINIMAL).unwrap();
        assert_eq!(cfg.pipeline.batch_size, 1024);
        assert_eq!(cfg.parser.quotas.max_memory_bytes, 64 << 20);
        assert_eq!(cfg.parser.config_json(), "{}");
        assert!(cfg.late.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            pipeline = { name = "bad name", batch_size = 0 }
            source = { type = "file", path = "x" }
            parser = { name = "p", path = "p.wasm", quotas = { max_memory_bytes = 10 } }
            features = []
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected invalid")
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn pipeline_instance_is_optional_and_checked() {
        let base = MINIMAL;
        assert_eq!(Config::parse(base).unwrap().pipeline.instance, "");
        let named = format!("pipeline = {{ instance = \"host-a\" }}\n{base}");
        assert_eq!(Config::parse(&named).unwrap().pipeline.instance, "host-a");
        let bad = format!("pipeline = {{ instance = \"host a@1\" }}\n{base}");
        let Err(ConfigError::Invalid(problems)) = Config::parse(&bad) else {
            panic!("expected invalid")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.contains("pipeline.instance `host a@1`")),
            "{problems:?}"
        );
    }

    #[test]
    fn routes_are_checked() {
        let kafka = r#"
            source = { type = "kafka", topics = ["a", "b"], properties = { "bootstrap.servers" = "x:9092" } }
            parser = { name = "json", path = "p.wasm" }
            [[parsers]]
            name = "alt"
            path = "p.wasm"
            topics = ["b"]
            [[features]]
            name = "counter"
            path = "c.wasm"
            event_types = ["like"]
            allowed_lateness = "20m"
        "#;
        let cfg = Config::parse(kafka).unwrap();
        assert!(matches!(
            cfg.source,
            SourceConfig::Kafka {
                consumer_nice: 5,
                ..
            }
        ));
        for (nice, ok) in [(0, true), (19, true), (20, false), (-1, false)] {
            let text = kafka.replace(
                "topics = [\"a\", \"b\"],",
                &format!("topics = [\"a\", \"b\"], consumer_nice = {nice},"),
            );
            match Config::parse(&text) {
                Ok(_) => assert!(ok, "consumer_nice {nice} accepted"),
                Err(ConfigError::Invalid(p)) => {
                    assert!(
                        !ok && p.iter().any(|p| p.contains("source.consumer_nice")),
                        "{p:?}"
                    )
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(cfg.parsers[0].topics, vec!["b".to_string()]);
        assert_eq!(cfg.features[0].event_types, vec!["like".to_string()]);
        assert_eq!(cfg.features[0].allowed_lateness, Duration::from_secs(1200));
        assert_eq!(cfg.parsers[0].allowed_lateness, Duration::ZERO);
        let bad = format!(
            "{}\n[[parsers]]\nname = \"third\"\npath = \"p.wasm\"\ntopics = [\"b\", \"zzz\"]\nevent_types = [\"x\"]\nallowed_lateness = \"1m\"\n",
            kafka.replace(
                "name = \"json\", path = \"p.wasm\"",
                "name = \"json\", path = \"p.wasm\", topics = [\"a\"]"
            )
        );
        let Err(ConfigError::Invalid(problems)) = Config::parse(&bad) else {
            panic!("expected invalid")
        };
        let text = problems.join("\n");
        for want in [
            "claimed by parsers `alt` and `third`",
            "`zzz` is not one of source.topics",
            "[[parsers]] `third`: `event_types`",
            "[[parsers]] `third`: `allowed_lateness`",
            "[parser] `json`: `topics`",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        assert!(Config::parse(&format!(
            "{MINIMAL}\n[watermark]\nout_of_orderness = \"soon\""
        ))
        .is_err());
        assert!(Config::parse(&format!("{MINIMAL}\n[pipeline]\nbatchsize = 3")).is_err());
        assert!(Config::parse(&MINIMAL.replace("type = \"file\"", "type = \"ftp\"")).is_err());
    }

    #[test]
    fn smb_outputs_get_defaults_and_every_problem_is_reported() {
        let schema = r#"{"type":"record","name":"V","fields":[{"name":"user_id","type":"string"},{"name":"event_time","type":"long"}]}"#;
        let good = format!(
            "{MINIMAL}\n[[outputs]]\ntype = \"smb\"\nname = \"views\"\nkey_field = \"user_id\"\nbuckets = 8\npath = \"out/views\"\nschema = '{schema}'\n"
        );
        let cfg = Config::parse(&good).unwrap();
        let OutputConfig::Smb(o) = &cfg.outputs[0];
        assert_eq!(
            (o.shards, o.deflate_level, o.codec),
            (1, 6, AvroCodec::Deflate)
        );
        assert_eq!(o.work_dir(), PathBuf::from("out/views/.tessera"));
        // An instance writes under its own directory of path and work dir.
        assert_eq!(o.for_instance("").path, o.path);
        let a = o.for_instance("a");
        assert_eq!(a.path, Some(PathBuf::from("out/views/instance=a")));
        assert_eq!(a.work_dir(), PathBuf::from("out/views/.tessera/instance=a"));
        let mut on_s3 = o.clone();
        on_s3.path = None;
        for (prefix, want) in [("", "instance=b"), ("/tiles/v/", "tiles/v/instance=b")] {
            on_s3.s3 = Some(crate::sinks::smb::S3Location {
                bucket: "b".into(),
                prefix: prefix.into(),
                endpoint: None,
                region: "us-east-1".into(),
                access_key_id: None,
                secret_access_key: None,
            });
            assert_eq!(on_s3.for_instance("b").s3.unwrap().prefix, want);
        }
        let bad = format!(
            "{MINIMAL}\n[[outputs]]\ntype = \"smb\"\nname = \"v v\"\nkey_field = \"nope\"\nbuckets = 6\nschema = '{schema}'\ndeflate_level = 12\n"
        );
        let Err(ConfigError::Invalid(problems)) = Config::parse(&bad) else {
            panic!("expected invalid")
        };
        // name, neither path nor s3, bucket count, key field, deflate level
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("power of two")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("`nope`")),
            "{problems:?}"
        );
        let twice = format!("{good}\n{}", &good[MINIMAL.len()..]);
        assert!(
            matches!(Config::parse(&twice), Err(ConfigError::Invalid(p)) if p[0].contains("used twice"))
        );
        assert!(Config::parse(&good.replace("buckets = 8", "buckets = 8\nbukets = 2")).is_err());
    }

    #[test]
    fn admin_listen_must_be_an_address_of_its_own() {
        let with = |listen: &str| format!("{MINIMAL}\n[admin]\nlisten = \"{listen}\"\n");
        assert!(Config::parse(&with("127.0.0.1:9090")).is_ok());
        for (bad, why) in [
            ("nine", "not an address"),
            ("127.0.0.1:8080", "is api.listen too"),
        ] {
            assert!(
                matches!(Config::parse(&with(bad)), Err(ConfigError::Invalid(p)) if p[0].contains(why)),
                "{bad}"
            );
        }
    }

    #[test]
    fn admin_tls_needs_a_listener_of_its_own_and_tls_paths_resolve_against_the_file() {
        let tls = "[admin.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let alone = format!("{MINIMAL}\n[admin]\n{tls}");
        assert!(
            matches!(Config::parse(&alone), Err(ConfigError::Invalid(p)) if p[0].contains("admin.tls needs admin.listen"))
        );
        let mut cfg = Config::parse(&format!(
            "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9090\"\n{tls}"
        ))
        .unwrap();
        cfg.resolve_paths(Path::new("/etc/tessera"));
        let t = cfg.admin.tls.unwrap();
        assert_eq!(
            (t.cert, t.key),
            ("/etc/tessera/c.pem".into(), "/etc/tessera/k.pem".into())
        );
    }

    #[test]
    fn duplicate_plugin_names_are_rejected() {
        let text = MINIMAL.replace("name = \"counter\"", "name = \"json\"");
        assert!(
            matches!(Config::parse(&text), Err(ConfigError::Invalid(p)) if p[0].contains("used twice"))
        );
    }
}
