//! Logging set-up, progress display for long runs, and the status and
//! metrics a running pipeline reports (`status`).

pub mod status;

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

use crate::pipeline::Progress;

/// Initialises tracing to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Shows progress: a spinner line on a terminal, a log line every few seconds otherwise.
pub struct ProgressReporter {
    bar: Option<ProgressBar>,
    last_log: std::time::Instant,
}

impl ProgressReporter {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
            b
        });
        ProgressReporter {
            bar,
            last_log: std::time::Instant::now(),
        }
    }

    pub fn update(&mut self, p: &Progress) {
        let msg = format!(
            "{} records, {} events, {} dead-lettered, {:.0} records/s, at {}{}",
            p.records_in,
            p.events_out,
            p.dead_lettered,
            p.rate(),
            p.position,
            p.watermark
                .map(|w| format!(", watermark {w}"))
                .unwrap_or_default()
        );
        match &self.bar {
            Some(b) => {
                b.set_message(msg);
                b.tick();
            }
            None if self.last_log.elapsed().as_secs() >= 5 => {
                tracing::info!("{msg}");
                self.last_log = std::time::Instant::now();
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for ProgressReporter {
    fn default() -> Self {
        Self::new()
    }
}
