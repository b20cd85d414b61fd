//! The `tessera` binary: run a pipeline, query features, serve the HTTP API.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
        #[arg(short, long, default_value = "tessera.toml")]
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
        #[arg(short, long, default_value = "tessera.toml")]
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
        #[arg(short, long, default_value = "tessera.toml")]
        config: PathBuf,
    },
    /// Serve the HTTP API over the store.
    Serve {
        #[arg(short, long, default_value = "tessera.toml")]
        config: PathBuf,
        /// Listen address (default: api.listen from the config).
        #[arg(long)]
        listen: Option<String>,
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
        Command::Serve { config, listen } => {
            let cfg = Config::load(&config)?;
            let store = stores::open(&cfg.store)?;
            let addr = listen.unwrap_or(cfg.api.listen.clone());
            tokio_runtime()?.block_on(serve_http(store, &addr, true))
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")
}

async fn serve_http(
    store: Arc<dyn stores::TileStore>,
    addr: &str,
    until_ctrl_c: bool,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the HTTP API");
    let server = axum::serve(listener, api::router(store));
    if until_ctrl_c {
        server
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
    } else {
        server.await?;
    }
    Ok(())
}

fn run(config: &std::path::Path, serve: bool, json: bool) -> Result<()> {
    let cfg = Config::load(config)?;
    let store = stores::open(&cfg.store)?;
    let listen = cfg.api.listen.clone();
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
        let store = store.clone();
        let listen = listen.clone();
        rt.spawn(async move {
            if let Err(e) = serve_http(store, &listen, false).await {
                tracing::error!(error = %e, "HTTP API stopped");
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
