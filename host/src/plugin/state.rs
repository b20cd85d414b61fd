//! Per-instance host state: the WASI context (no capabilities), the memory
//! limiter, and the log routing from the plugin to tracing.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{HostImports, LogLevel};

/// What a store holds for one plugin instance.
pub struct PluginState {
    plugin: Arc<str>,
    version: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) stderr: LogPipe,
}

impl PluginState {
    /// The state of one instance of `plugin` at `version` (both tag its log lines).
    pub fn new(plugin: Arc<str>, version: Arc<str>, max_memory_bytes: usize) -> Self {
        let stdout = LogPipe::new(plugin.clone(), version.clone(), "stdout");
        let stderr = LogPipe::new(plugin.clone(), version.clone(), "stderr");
        let mut b = WasiCtx::builder();
        // Deny everything ambient: no preopens, env, args or stdin (defaults),
        // and no sockets of any kind.
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        b.stdout(stdout).stderr(stderr.clone());
        PluginState {
            plugin,
            version,
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: max_memory_bytes,
                hit: false,
            },
            stderr,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostImports for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let (plugin, version) = (&*self.plugin, &*self.version);
        let message = truncate(&message, MAX_LINE);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, version, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, version, "{message}"),
            LogLevel::Info => tracing::info!(plugin, version, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, version, "{message}"),
            LogLevel::Error => tracing::error!(plugin, version, "{message}"),
        }
    }
}

impl super::bindings::parser::tessera::plugin::types::Host for PluginState {}

const MAX_LINE: usize = 4096;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps linear memory growth and remembers whether the cap was hit, so a
/// trap that follows (a Rust guest aborts on allocation failure) is reported
/// as a memory-quota breach.
pub struct MemoryLimiter {
    pub max_bytes: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A plugin's stdout or stderr: complete lines go to tracing; the last few
/// stderr lines are kept to explain a trap.
#[derive(Clone)]
pub struct LogPipe {
    inner: Arc<Mutex<LogPipeInner>>,
}

struct LogPipeInner {
    plugin: Arc<str>,
    version: Arc<str>,
    stream: &'static str,
    partial: Vec<u8>,
    recent: std::collections::VecDeque<String>,
}

impl LogPipe {
    fn new(plugin: Arc<str>, version: Arc<str>, stream: &'static str) -> Self {
        LogPipe {
            inner: Arc::new(Mutex::new(LogPipeInner {
                plugin,
                version,
                stream,
                partial: Vec::new(),
                recent: Default::default(),
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.partial.extend_from_slice(bytes);
        while let Some(nl) = inner.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = inner.partial.drain(..=nl).collect();
            inner.emit(&line[..line.len() - 1]);
        }
        if inner.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut inner.partial);
            inner.emit(&line);
        }
    }

    /// The last lines written (plus any unterminated one), oldest first.
    pub fn recent(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines: Vec<String> = inner.recent.iter().cloned().collect();
        if !inner.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&inner.partial).into_owned());
        }
        lines.join(" | ")
    }

    /// Forgets the recent lines (at the start of each call).
    pub fn clear_recent(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.recent.clear();
    }
}

impl LogPipeInner {
    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = truncate(text.trim_end(), MAX_LINE).to_string();
        if text.is_empty() {
            return;
        }
        tracing::info!(
            plugin = &*self.plugin,
            version = &*self.version,
            stream = self.stream,
            "{text}"
        );
        if self.recent.len() == 4 {
            self.recent.pop_front();
        }
        self.recent.push_back(text);
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
