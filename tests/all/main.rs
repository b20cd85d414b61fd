//! Integration tests: the real plugins compiled to wasm32-wasip2, the host
//! library and the `tessera` binary, one test binary (as wasmtime does).

mod admin;
mod changes;
mod container;
mod containment;
mod http;
mod kafka;
mod kafka_source;
mod restart;
mod servers;
mod shadow;
mod smb;
mod smb_pipeline;
mod sources;
mod stores;
mod support;
mod tls;
mod windows;
