//! Why a plugin could not be loaded, or why one call failed.

/// A plugin failure. Load errors (`NotAComponent`, `WrongWorld`, `Compile`,
/// `Init`) stop a plugin from being used; call errors fail one batch.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PluginError {
    #[error("cannot set up the plugin engine: {0}")]
    Engine(String),
    #[error("cannot read component {path}: {message}")]
    Read { path: String, message: String },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("component does not implement world {world}: {message}")]
    WrongWorld {
        world: &'static str,
        message: String,
    },
    #[error("plugin init failed: {0}")]
    Init(String),
    #[error("exceeded its CPU budget of {fuel} fuel per call")]
    CpuBudget { fuel: u64 },
    #[error("exceeded its wall-time limit of {ms} ms per call")]
    WallTime { ms: u128 },
    #[error("exceeded its memory limit of {bytes} bytes")]
    Memory { bytes: usize },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {got} {what}, over its limit of {limit}")]
    OutputTooLarge {
        what: &'static str,
        got: usize,
        limit: usize,
    },
    #[error("returned malformed output: {0}")]
    MalformedOutput(String),
    #[error("returned an error: {0}")]
    Failed(String),
    #[error("is quarantined")]
    Quarantined,
}

impl PluginError {
    /// A short name of the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Engine(_) => "engine",
            PluginError::Read { .. } => "read",
            PluginError::NotAComponent(_) => "not_a_component",
            PluginError::WrongWorld { .. } => "wrong_world",
            PluginError::Init(_) => "init",
            PluginError::CpuBudget { .. } => "cpu_budget",
            PluginError::WallTime { .. } => "wall_time",
            PluginError::Memory { .. } => "memory",
            PluginError::Trap(_) => "trap",
            PluginError::OutputTooLarge { .. } => "output_too_large",
            PluginError::MalformedOutput(_) => "malformed_output",
            PluginError::Failed(_) => "failed",
            PluginError::Quarantined => "quarantined",
        }
    }

    /// Whether the call broke one of its quotas (rather than trapping or
    /// returning bad output on its own).
    pub fn is_quota(&self) -> bool {
        matches!(
            self,
            PluginError::CpuBudget { .. }
                | PluginError::WallTime { .. }
                | PluginError::Memory { .. }
                | PluginError::OutputTooLarge { .. }
        )
    }
}
