//! wit-bindgen output for the three plugin worlds. The WIT types map onto the
//! hand-written ones in `types.rs`. Each world's component-type section is
//! emitted where its export macro is invoked, so a plugin's component carries
//! only the world it exports.

pub mod parser_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "parser-plugin",
        with: { "tessera:plugin/types@0.1.0": crate::types },
        pub_export_macro: true,
        export_macro_name: "export_parser_world",
        default_bindings_module: "tessera_sdk::__private::parser_world",
        runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
    });

    impl<T: crate::Parser> exports::tessera::plugin::parser::Guest for crate::glue::ParserAdapter<T> {
        fn init(config: String) -> Result<(), String> {
            Self::do_init(config)
        }
        fn parse(batch: crate::RawBatch) -> crate::ParseOutput {
            Self::do_parse(batch)
        }
    }
}
pub use parser_world::tessera::plugin::host;

pub mod feature_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "feature-plugin",
        with: { "tessera:plugin/types@0.1.0": crate::types },
        pub_export_macro: true,
        export_macro_name: "export_feature_world",
        default_bindings_module: "tessera_sdk::__private::feature_world",
        runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
    });

    impl<T: crate::Feature> exports::tessera::plugin::feature::Guest
        for crate::glue::FeatureAdapter<T>
    {
        fn init(config: String) -> Result<Vec<crate::FeatureSpec>, String> {
            Self::do_init(config)
        }
        fn process(events: crate::EventBatch) -> Result<crate::UpdateBatch, String> {
            Self::do_process(events)
        }
    }
}

pub mod late_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "late-plugin",
        with: { "tessera:plugin/types@0.1.0": crate::types },
        pub_export_macro: true,
        export_macro_name: "export_late_world",
        default_bindings_module: "tessera_sdk::__private::late_world",
        runtime_path: "tessera_sdk::__private::wit_bindgen::rt",
    });

    impl<T: crate::LateHandler> exports::tessera::plugin::late_handler::Guest
        for crate::glue::LateAdapter<T>
    {
        fn init(config: String) -> Result<(), String> {
            Self::do_init(config)
        }
        fn decide(batch: crate::LateBatch) -> Vec<crate::LateDecision> {
            Self::do_decide(batch)
        }
    }
}

pub use wit_bindgen;

/// Sends a log line through the world's `host` import.
pub(crate) fn host_log(level: crate::log::Level, message: &str) {
    {
        use crate::log::Level;
        let l = match level {
            Level::Trace => host::LogLevel::Trace,
            Level::Debug => host::LogLevel::Debug,
            Level::Info => host::LogLevel::Info,
            Level::Warn => host::LogLevel::Warn,
            Level::Error => host::LogLevel::Error,
        };
        host::log(l, message);
    }
}
