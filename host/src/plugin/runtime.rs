//! The engine shared by all plugins, the linkers, the epoch ticker, and
//! loading a component into a type-checked, pre-instantiated template.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config as EngineConfig, Engine};

use super::bindings;
use super::instance::{FeaturePlugin, LatePlugin, ParserPlugin, Sandbox, Template};
use super::state::PluginState;
use super::{PluginError, PluginKind, PluginMeta};
use crate::config::{PluginConfig, QuarantinePolicy, Quotas, RuntimeConfig};

/// Where a component comes from, and how to run it.
#[derive(Clone, Debug)]
pub struct PluginSource {
    pub name: String,
    /// `None`: the first 12 hex digits of the component's SHA-256.
    pub version: Option<String>,
    pub bytes: Vec<u8>,
    pub config_json: String,
    pub quotas: Quotas,
    pub quarantine: QuarantinePolicy,
}

impl PluginSource {
    /// Reads the component named by a plugin's config section.
    pub fn from_config(cfg: &PluginConfig) -> Result<Self, PluginError> {
        let bytes = std::fs::read(&cfg.path).map_err(|e| PluginError::Read {
            path: cfg.path.display().to_string(),
            message: format!("{e} (build the plugins with scripts/build-plugins.sh)"),
        })?;
        Ok(PluginSource {
            name: cfg.name.clone(),
            version: cfg.version.clone(),
            bytes,
            config_json: cfg.config_json(),
            quotas: cfg.quotas.clone(),
            quarantine: cfg.quarantine.clone(),
        })
    }
}

/// The wasmtime engine and linkers. Cheap to share by reference; dropping it
/// stops the epoch ticker.
pub struct PluginRuntime {
    engine: Engine,
    settings: RuntimeConfig,
    parser_linker: Linker<PluginState>,
    feature_linker: Linker<PluginState>,
    late_linker: Linker<PluginState>,
    ticker_stop: Arc<AtomicBool>,
    /// Components compiled by this process, by SHA-256 of their bytes: an
    /// upload compiles once and its activation (or a rollback to it) finds
    /// the result here. Bounded: cleared when it reaches [`COMPILED_KEPT`].
    compiled: std::sync::Mutex<std::collections::HashMap<String, Component>>,
}

/// Most compiled components [`PluginRuntime`] keeps in memory.
const COMPILED_KEPT: usize = 32;

impl PluginRuntime {
    pub fn new(settings: &RuntimeConfig) -> Result<Self, PluginError> {
        let mut cfg = EngineConfig::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(settings.fuel)
            .wasm_simd(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Names compiled plugin functions for `perf report` (profiling only).
        if std::env::var_os("TESSERA_PERFMAP").is_some() {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let linker = |add: fn(&mut Linker<PluginState>) -> wasmtime::Result<()>| -> Result<Linker<PluginState>, PluginError> {
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(format!("linker: {e:#}")))?;
            add(&mut linker).map_err(|e| PluginError::Engine(format!("linker: {e:#}")))?;
            Ok(linker)
        };
        let parser_linker = linker(|l| {
            bindings::parser::ParserPlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(
                l,
                |s| s,
            )
        })?;
        let feature_linker = linker(|l| {
            bindings::feature::FeaturePlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(
                l,
                |s| s,
            )
        })?;
        let late_linker = linker(|l| {
            bindings::late::LatePlugin::add_to_linker::<PluginState, HasSelf<PluginState>>(l, |s| s)
        })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = settings.epoch_tick;
            std::thread::Builder::new()
                .name("tessera-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Engine(format!("epoch ticker: {e}")))?;
        }
        Ok(PluginRuntime {
            engine,
            settings: settings.clone(),
            parser_linker,
            feature_linker,
            late_linker,
            ticker_stop,
            compiled: Default::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether fuel metering is on for this engine.
    pub fn fuel_enabled(&self) -> bool {
        self.settings.fuel
    }

    /// Epoch ticks that make up `wall` (at least 2, so a call always gets one
    /// full tick).
    pub(super) fn ticks_for(&self, wall: Duration) -> u64 {
        ticks_for(self.settings.epoch_tick, wall)
    }

    pub(super) fn epoch_tick(&self) -> Duration {
        self.settings.epoch_tick
    }

    fn compile(
        &self,
        src: &PluginSource,
        kind: PluginKind,
    ) -> Result<(Component, PluginMeta), PluginError> {
        // Hashed once: names the compiled component, and the version when
        // the config gives none.
        let digest = super::sha256_hex(&src.bytes);
        let version = src
            .version
            .clone()
            .unwrap_or_else(|| digest[..12].to_string());
        let meta = PluginMeta {
            name: src.name.clone(),
            version,
            kind,
        };
        if wasmparser_is_core_module(&src.bytes) {
            return Err(PluginError::NotAComponent(
                "this is a core WebAssembly module; build a component (cargo build --target wasm32-wasip2)".into(),
            ));
        }
        let component = self.component(&src.bytes, &digest)?;
        Ok((component, meta))
    }

    /// A compiled component: from memory when this process compiled the
    /// same bytes before, else see [`Self::component_from_disk_or_compile`].
    /// `digest` is the SHA-256 of `bytes`, in hex.
    fn component(&self, bytes: &[u8], digest: &str) -> Result<Component, PluginError> {
        if let Some(c) = self.compiled.lock().expect("not poisoned").get(digest) {
            return Ok(c.clone());
        }
        let component = self.component_from_disk_or_compile(bytes, digest)?;
        let mut kept = self.compiled.lock().expect("not poisoned");
        if kept.len() >= COMPILED_KEPT {
            kept.clear();
        }
        kept.insert(digest.to_string(), component.clone());
        Ok(component)
    }

    /// Compiles a component, or with `runtime.cache_dir` loads what an
    /// earlier run compiled from the same bytes under the same engine
    /// settings (a file named by both hashes). A cache file that cannot be
    /// used (truncated, another wasmtime) is compiled again and replaced;
    /// a cache that cannot be written only costs the next start a compile.
    fn component_from_disk_or_compile(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Component, PluginError> {
        let compile = || {
            Component::new(&self.engine, bytes)
                .map_err(|e| PluginError::NotAComponent(format!("{e:#}")))
        };
        let Some(dir) = &self.settings.cache_dir else {
            return compile();
        };
        let engine_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        let path = dir.join(format!("{digest}-{engine_hash:016x}.cwasm"));
        if path.exists() {
            // SAFETY: the cache directory holds only what `serialize` below
            // wrote for this engine (the operator's directory, as trusted as
            // the plugins themselves); wasmtime checks the version and
            // settings in the file's header and refuses a mismatch.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "compiled plugin cache unusable; compiling again")
                }
            }
        }
        let component = compile()?;
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|data| {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                // Unique per writer (process and call), then renamed into place:
                // a reader never sees a half-written file.
                static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = WRITES.fetch_add(1, Ordering::Relaxed);
                let tmp = dir.join(format!(".{digest}-{}-{n}.tmp", std::process::id()));
                std::fs::write(&tmp, data).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot cache the compiled plugin");
        }
        Ok(component)
    }

    /// Compiles `src`, type-checks it against `kind`'s world (`linker` plus
    /// the bindgen `*Pre`), then instantiates and initialises it once, so a
    /// bad component or config fails at load time.
    fn load<T: Template>(
        &self,
        src: &PluginSource,
        kind: PluginKind,
        linker: &Linker<PluginState>,
        typed: fn(InstancePre<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<Sandbox<T>, PluginError> {
        let (component, meta) = self.compile(src, kind)?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(typed)
            .map_err(|e| wrong_world(kind, e))?;
        let mut sandbox = Sandbox::new(self, meta, pre, src);
        sandbox.ensure_live()?;
        Ok(sandbox)
    }

    /// Loads a parser plugin (see [`load`](Self::load)).
    pub fn load_parser(&self, src: &PluginSource) -> Result<ParserPlugin, PluginError> {
        let sandbox = self.load(
            src,
            PluginKind::Parser,
            &self.parser_linker,
            bindings::parser::ParserPluginPre::new,
        )?;
        Ok(ParserPlugin::new(sandbox))
    }

    /// Loads a feature plugin; its feature specs are read during `init`.
    pub fn load_feature(&self, src: &PluginSource) -> Result<FeaturePlugin, PluginError> {
        let sandbox = self.load(
            src,
            PluginKind::Feature,
            &self.feature_linker,
            bindings::feature::FeaturePluginPre::new,
        )?;
        Ok(FeaturePlugin::new(sandbox))
    }

    /// Loads a late-data handler.
    pub fn load_late(&self, src: &PluginSource) -> Result<LatePlugin, PluginError> {
        let sandbox = self.load(
            src,
            PluginKind::Late,
            &self.late_linker,
            bindings::late::LatePluginPre::new,
        )?;
        Ok(LatePlugin::new(sandbox))
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Epoch ticks of `tick` that make up `wall`, at least 2.
pub(super) fn ticks_for(tick: Duration, wall: Duration) -> u64 {
    (wall.as_nanos() / tick.as_nanos().max(1)) as u64 + 2
}

fn wrong_world(kind: PluginKind, e: wasmtime::Error) -> PluginError {
    PluginError::WrongWorld {
        world: kind.world(),
        message: format!("{e:#}"),
    }
}

/// A core module starts with `\0asm` and version 1; a component has the
/// same magic with a different version/layer field.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}
