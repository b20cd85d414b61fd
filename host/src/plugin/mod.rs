//! The WebAssembly plugin runtime: wasmtime's component model, one sandbox
//! per plugin, quotas per call.
//!
//! Nouns, from the outside in:
//! - [`PluginRuntime`] owns the wasmtime `Engine` (shared by all plugins), the
//!   linkers for the three worlds, and the epoch ticker that enforces wall
//!   time. It loads a component once (compile + type-check against the world)
//!   into a pre-instantiated template.
//! - [`ParserPlugin`], [`FeaturePlugin`], [`LatePlugin`] are loaded plugins of
//!   each world. Each keeps one live instance and reuses it across batches; a
//!   call that traps, runs out of fuel or wall time, hits its memory limit or
//!   returns malformed output fails with a [`PluginError`], the instance is
//!   dropped (a trapped instance cannot be re-entered) and the next call
//!   instantiates a fresh one from the template (~10 µs).
//! - [`PluginHealth`] counts consecutive failures; the pipeline applies the
//!   quarantine policy from config.
//!
//! Capabilities: a plugin gets no filesystem (no preopens), no network (TCP,
//! UDP and name lookup denied), no environment variables or arguments, and
//! closed stdin. It does see the host's wall and monotonic clocks and WASI
//! random (host-seeded); tile logic must not depend on them, since event time
//! comes from events. Its stdout/stderr lines, and the `host.log` import, go
//! to the host's tracing output with the plugin's name; the last stderr lines
//! (a Rust panic message) are quoted in the error when a call traps.

pub mod bindings;
mod error;
mod instance;
mod runtime;
mod state;

pub use error::PluginError;
pub use instance::{FeaturePlugin, LatePlugin, ParserPlugin, PluginHealth};
pub use runtime::{PluginRuntime, PluginSource};

use std::fmt;

/// The SHA-256 of `bytes` in lower-case hex: names components (the compile
/// cache, the registry's blobs) and versions the config leaves unnamed.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    Parser,
    Feature,
    Late,
}

impl PluginKind {
    /// The WIT world name.
    pub fn world(self) -> &'static str {
        match self {
            PluginKind::Parser => "tessera:plugin/parser-plugin@0.1.0",
            PluginKind::Feature => "tessera:plugin/feature-plugin@0.1.0",
            PluginKind::Late => "tessera:plugin/late-plugin@0.1.0",
        }
    }
}

/// Who a plugin is: shown in logs, metrics and dead letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginMeta {
    pub name: String,
    pub version: String,
    pub kind: PluginKind,
}

impl fmt::Display for PluginMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}
