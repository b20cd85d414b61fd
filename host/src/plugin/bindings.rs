//! wasmtime bindings for the three worlds of `wit/tessera.wit`. The `types`
//! and `host` interfaces are generated once (with the parser world) and shared.

pub mod parser {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "parser-plugin",
    });
}

pub mod feature {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "feature-plugin",
        with: {
            "tessera:plugin/types": super::parser::tessera::plugin::types,
            "tessera:plugin/host": super::parser::tessera::plugin::host,
        },
    });
}

pub mod late {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "late-plugin",
        with: {
            "tessera:plugin/types": super::parser::tessera::plugin::types,
            "tessera:plugin/host": super::parser::tessera::plugin::host,
        },
    });
}

pub use parser::tessera::plugin::host::{Host as HostImports, LogLevel};
pub use parser::tessera::plugin::types::*;
