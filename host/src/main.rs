//! The `tessera` binary: run a pipeline, query features, serve the HTTP API.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use tessera::api::{self, query};
use tessera::telemetry::{self, ProgressReporter};
use tessera::{stores, Config, Pipeline};

/// mimalloc: the tiler and store allocate and free large, short-lived
/// buffers every checkpoint, where it measured ~10% faster end to end than
/// the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "A WebAssembly-extensible stream processor for windowed features"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline over its source until the input ends (Ctrl-C checkpoints and stops).
    Run {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
        /// Also serve the HTTP API while running, and keep serving after the input ends.
        #[arg(long)]
        serve: bool,
        /// Print the run summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Answer one feature of one entity over a window, from the store.
    Query {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
        #[arg(long)]
        feature: String,
        #[arg(long)]
        entity: String,
        /// Window length, e.g. 30m, 2h, 1d.
        #[arg(long)]
        window: String,
        /// End of the window: ms since the epoch or RFC 3339 (default: now).
        #[arg(long)]
        at: Option<String>,
    },
    /// List the features registered in the store.
    Features {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
    },
    /// An output's completeness: how far its event time is complete and
    /// each event-time partition (events, completion, amendments).
    Completeness {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
        /// `tiles` (the default) or the name of an SMB output.
        #[arg(long)]
        output: Option<String>,
        /// Another instance's ledger of a scaled-out pipeline (default:
        /// the config's `pipeline.instance`).
        #[arg(long)]
        instance: Option<String>,
    },
    /// The change log: completions and amendments numbered above a high
    /// watermark; with `--commit`, commit a consumer's high watermark.
    Changes {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
        /// Changes above this number.
        #[arg(long, conflicts_with = "consumer")]
        since: Option<u64>,
        /// Changes above what this consumer committed.
        #[arg(long)]
        consumer: Option<String>,
        /// Commit this high watermark for `--consumer` (after processing).
        #[arg(long, requires = "consumer")]
        commit: Option<u64>,
        /// Another instance's change log of a scaled-out pipeline (default:
        /// the config's `pipeline.instance`).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Serve the HTTP API over the store.
    Serve {
        #[arg(short, long, env = "TESSERA_CONFIG", default_value = "tessera.toml")]
        config: PathBuf,
        /// Listen address (default: api.listen from the config).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Sort-merge-bucket outputs.
    #[command(subcommand)]
    Smb(SmbCommand),
    /// Plugins of a running host, through its admin API.
    Plugin {
        /// The host's API address.
        #[arg(long, env = "TESSERA_API", default_value = "http://127.0.0.1:8080")]
        api: String,
        /// A bearer token (`read` lists, `admin` changes).
        #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A PEM CA certificate to trust for an `https://` API (beside the
        /// system's roots), e.g. the host's self-signed certificate.
        #[arg(long, env = "TESSERA_CA_CERT")]
        ca_cert: Option<PathBuf>,
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a component as a new version of a stage's plugin (validated,
    /// compiled and smoke-tested by the host before it is stored).
    Upload {
        /// The stage (plugin name in the config).
        name: String,
        version: String,
        /// The component (.wasm).
        file: PathBuf,
        /// The world it implements: parser, feature or late.
        #[arg(long)]
        world: String,
        /// The config (JSON) this version runs with, instead of the stage's.
        #[arg(long)]
        config: Option<String>,
    },
    /// Swap an uploaded version in, between two batches.
    Activate { name: String, version: String },
    /// Go back to the version the last activation replaced.
    Rollback { name: String },
    /// Every stage: running version, state, quotas and use, uploaded versions.
    List,
    /// Show a stage's quotas, or change some (`--set fuel_per_call=1000000`).
    Quota {
        name: String,
        /// FIELD=VALUE; numbers as numbers, durations as text (`250ms`).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Shadow runs: `shadow NAME VERSION` runs an uploaded version beside
    /// the live one (outputs compared, never written); `shadow NAME` shows
    /// the comparison; `shadow NAME --stop` ends it. Activate the version
    /// to promote it.
    Shadow {
        name: String,
        version: Option<String>,
        /// Most time the shadow may take, as a share of the live path's.
        #[arg(long, conflicts_with = "stop")]
        max_share: Option<f64>,
        #[arg(long, conflicts_with = "version")]
        stop: bool,
    },
    /// The pipeline as configured.
    Pipeline,
}

#[derive(Subcommand)]
enum SmbCommand {
    /// Inner-join two SMB outputs by key, bucket by bucket (no shuffle).
    /// A side given several directories (a partition and its late-data
    /// siblings) is read as one.
    Join {
        /// Committed partition directories of the left output (local paths or
        /// s3://bucket/path URLs; endpoint from AWS_ENDPOINT_URL).
        #[arg(long, required = true, num_args = 1..)]
        left: Vec<PathBuf>,
        /// Committed partition directories of the right output (local or s3://).
        #[arg(long, required = true, num_args = 1..)]
        right: Vec<PathBuf>,
        /// Write each joined key as a JSON line {"key", "left", "right"} here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    telemetry::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            serve,
            json,
        } => run(&config, serve, json),
        Command::Query {
            config,
            feature,
            entity,
            window,
            at,
        } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            let f = store.feature(&feature)?.with_context(|| {
                format!("no feature named `{feature}` in the store (run the pipeline first?)")
            })?;
            let window_ms = query::parse_window(&window).map_err(anyhow::Error::msg)?;
            let at_ms = match at {
                Some(a) => query::parse_at(&a).map_err(anyhow::Error::msg)?,
                None => tessera::record::now_ms(),
            };
            let answer = query::answer(store.as_ref(), &f, &entity, window_ms, at_ms)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Features { config } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            println!("{}", serde_json::to_string_pretty(&store.features()?)?);
            Ok(())
        }
        Command::Completeness {
            config,
            output,
            instance,
        } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            let at = api::changes::LedgerAt::of(&cfg).instance(instance.as_deref())?;
            let answer = at.completeness(store.as_ref(), output.as_deref(), None, None)?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::Changes {
            config,
            since,
            consumer,
            commit,
            instance,
        } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            let at = api::changes::LedgerAt::of(&cfg).instance(instance.as_deref())?;
            match (commit, consumer.as_deref()) {
                (Some(hw), Some(name)) => {
                    at.commit(store.as_ref(), name, hw)?;
                    println!(
                        "{}",
                        serde_json::json!({ "consumer": name, "high_watermark": hw })
                    );
                }
                _ => {
                    let changes = at.changes(store.as_ref(), since, consumer.as_deref())?;
                    println!("{}", serde_json::to_string_pretty(&changes)?);
                }
            }
            Ok(())
        }
        Command::Serve { config, listen } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            let addr = listen.unwrap_or(cfg.api.listen.clone());
            let tls = tls_config(cfg.api.tls.as_ref())?;
            let state = api::AppState {
                metrics: Some(install_metrics()?),
                ledger: Some(api::changes::LedgerAt::of(&cfg)),
                ..api::AppState::configured(store, &cfg.api)
            };
            let rt = tokio_runtime()?;
            let listener = bind(&rt, &addr, "the API address")?;
            rt.block_on(serve_http(state, None, listener, tls, true))
        }
        Command::Smb(SmbCommand::Join { left, right, out }) => {
            smb_join(&left, &right, out.as_deref())
        }
        Command::Plugin {
            api,
            token,
            ca_cert,
            command,
        } => plugin_command(&api, token, ca_cert.as_deref(), command),
    }
}

/// `tessera plugin ...`: one admin API call, its answer on stdout as JSON.
fn plugin_command(
    api: &str,
    token: Option<String>,
    ca_cert: Option<&std::path::Path>,
    command: PluginCommand,
) -> Result<()> {
    let client = tessera::admin::client::AdminClient::new(api, token, ca_cert)?;
    let answer = match command {
        PluginCommand::Upload {
            name,
            version,
            file,
            world,
            config,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            client.upload(&name, &version, &world, bytes, config.as_deref())?
        }
        PluginCommand::Activate { name, version } => client.activate(&name, &version)?,
        PluginCommand::Rollback { name } => client.rollback(&name)?,
        PluginCommand::List => client.list()?,
        PluginCommand::Quota { name, set } if set.is_empty() => client.quotas(&name)?,
        PluginCommand::Quota { name, set } => {
            let mut change = serde_json::Map::new();
            for kv in &set {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--set {kv}: expected FIELD=VALUE"))?;
                let value = v
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::from(v));
                change.insert(k.to_string(), value);
            }
            client.set_quotas(&name, &serde_json::Value::Object(change))?
        }
        PluginCommand::Shadow {
            name, stop: true, ..
        } => client.stop_shadow(&name)?,
        PluginCommand::Shadow {
            name,
            version: Some(version),
            max_share,
            ..
        } => client.shadow(&name, &version, max_share)?,
        PluginCommand::Shadow { name, .. } => client.shadow_report(&name)?,
        PluginCommand::Pipeline => client.pipeline()?,
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// Removes a scratch directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tessera smb join`: the join's counts on stdout as JSON, the joined rows to `out`.
fn smb_join(left: &[PathBuf], right: &[PathBuf], out: Option<&std::path::Path>) -> Result<()> {
    use std::io::Write;
    use tessera::sinks::smb::{local_partition_dirs, smb_join, SmbSource};
    // s3:// partitions are downloaded here for the join and removed after.
    let scratch = std::env::temp_dir().join(format!("tessera-smb-join-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let left =
        local_partition_dirs(left, &scratch.join("left")).context("opening the left SMB output")?;
    let right = local_partition_dirs(right, &scratch.join("right"))
        .context("opening the right SMB output")?;
    let l = SmbSource::open(&left).context("opening the left SMB output")?;
    let r = SmbSource::open(&right).context("opening the right SMB output")?;
    let mut sink = match out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let to_json = |vs: &[apache_avro::types::Value]| -> Vec<serde_json::Value> {
        vs.iter()
            .map(|v| serde_json::Value::try_from(v.clone()).unwrap_or(serde_json::Value::Null))
            .collect()
    };
    let started = std::time::Instant::now();
    let stats = smb_join(&l, &r, |key, lv, rv| {
        if let Some(w) = sink.as_mut() {
            let line = serde_json::json!({"key": key, "left": to_json(lv), "right": to_json(rv)});
            writeln!(w, "{line}").map_err(|source| tessera::sinks::smb::SmbError::Io {
                path: out.map(|p| p.display().to_string()).unwrap_or_default(),
                source,
            })?;
        }
        Ok(())
    })?;
    if let Some(mut w) = sink {
        w.flush()?;
    }
    println!(
        "{}",
        serde_json::json!({
            "left_records": stats.left_records,
            "right_records": stats.right_records,
            "keys_matched": stats.keys_matched,
            "pairs": stats.pairs,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
}

/// Records metrics for `/metrics` from here on.
fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    // Plugin calls take from ~10 µs (a small batch) to the wall-time quota.
    let call_buckets = [
        1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tessera_plugin_call_seconds".into()),
            &call_buckets,
        )
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Serves the API, and the admin API when a pipeline runs here, over TLS
/// with `tls`.
async fn serve_http(
    state: api::AppState,
    admin: Option<tessera::admin::AdminState>,
    listener: tokio::net::TcpListener,
    tls: Option<TlsServerConfig>,
    until_ctrl_c: bool,
) -> Result<()> {
    tracing::info!(admin = admin.is_some(), "serving the HTTP API");
    let mut router = state.router();
    if let Some(admin) = admin {
        router = router.merge(admin.router());
    }
    let shutdown = async move {
        if until_ctrl_c {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    Ok(api::listen::serve(listener, tls, router, shutdown).await?)
}

/// Binds `addr` on `rt` now, so a taken port stops the host at start.
fn bind(rt: &tokio::runtime::Runtime, addr: &str, what: &str) -> Result<tokio::net::TcpListener> {
    rt.block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("binding {what} {addr}"))
}

type TlsServerConfig = std::sync::Arc<tokio_rustls::rustls::ServerConfig>;

/// The rustls config of a `[..tls]` section, if there is one.
fn tls_config(tls: Option<&tessera::config::TlsConfig>) -> Result<Option<TlsServerConfig>> {
    Ok(tls.map(api::listen::server_config).transpose()?)
}

fn run(config: &std::path::Path, serve: bool, json: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let store = stores::open(&cfg.store)?;
    let api_cfg = cfg.api.clone();
    let ledger = api::changes::LedgerAt::of(&cfg);
    let listen = cfg.api.listen.clone();
    // Read before the pipeline starts: a bad certificate stops the host.
    let (api_tls, admin_tls) = if serve {
        (
            tls_config(cfg.api.tls.as_ref())?,
            tls_config(cfg.admin.tls.as_ref())?,
        )
    } else {
        (None, None)
    };
    // Before the plugins load: they register their call-time histograms.
    let metrics = serve.then(install_metrics).transpose()?;
    // Read before the pipeline starts: a bad token file stops the host.
    let admin = serve
        .then(|| tessera::admin::auth::Tokens::load(&cfg.admin))
        .transpose()?
        .map(|tokens| (tokens, cfg.clone()));
    let mut pipeline = Pipeline::build(cfg, store.clone())?;
    let stop = pipeline.stop_flag();
    let rt = tokio_runtime()?;
    {
        let stop = stop.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!("interrupted: checkpointing and stopping");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    if serve {
        let state = api::AppState {
            status: Some(pipeline.status_board()),
            metrics,
            ledger: Some(ledger),
            ..api::AppState::configured(store.clone(), &api_cfg)
        };
        let (admin, admin_listen) = match admin {
            Some((tokens, cfg)) => (
                Some(tessera::admin::AdminState::new(
                    pipeline.control(),
                    tokens,
                    &cfg,
                )),
                cfg.admin.listen.clone(),
            ),
            None => (None, None),
        };
        // The admin routes on a listener of their own when configured.
        let shared_admin = match (admin, admin_listen) {
            (Some(admin), Some(addr)) => {
                let listener = bind(&rt, &addr, "admin.listen")?;
                tracing::info!(addr, "serving the admin API");
                rt.spawn(async move {
                    let forever = std::future::pending();
                    if let Err(e) =
                        api::listen::serve(listener, admin_tls, admin.router(), forever).await
                    {
                        tracing::error!(error = %e, addr, "admin API stopped");
                    }
                });
                None
            }
            (admin, _) => admin,
        };
        let listener = bind(&rt, &listen, "api.listen")?;
        rt.spawn(async move {
            if let Err(e) = serve_http(state, shared_admin, listener, api_tls, false).await {
                tracing::error!(error = format!("{e:#}"), "HTTP API stopped");
            }
        });
    }
    let mut progress = ProgressReporter::new();
    let result = pipeline.run(&mut |p| progress.update(p));
    progress.finish();
    let stats = result?;
    for (meta, health) in pipeline.plugin_health() {
        if health.failures > 0 {
            tracing::warn!(plugin = %meta, failures = health.failures, quarantined = health.quarantined, last_error = ?health.last_error, "plugin had failures");
        }
    }
    if json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        eprintln!("{}", stats.summary());
    }
    if serve && !stop.load(Ordering::Relaxed) {
        eprintln!("input done; serving on {listen} until Ctrl-C");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    if stats.records_in == 0 {
        eprintln!("no new input records: everything was already processed (positions are kept in the store)");
    }
    Ok(())
}
