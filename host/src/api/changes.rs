//! Completeness and the change log over HTTP (Psyberg-style consumers):
//!
//! - `GET /v1/completeness[?output=&from=&to=]` — how far an output's
//!   event time is complete (`tiles` by default, or an SMB output), and
//!   each partition (ms bounds) with its events, state, completion and
//!   amendments (with their directories for an SMB output).
//! - `GET /v1/changes?since=N` or `?consumer=NAME` — the completions and
//!   amendments numbered above `N` (or above what `NAME` committed), by
//!   number, with `last_change` to commit once they are processed.
//! - `GET /v1/changes/consumers/{name}` — the high watermark it committed.
//! - `PUT /v1/changes/consumers/{name}` `{"high_watermark": N}` — commits
//!   it (registers the consumer on first use); `N` above the last change is
//!   refused and changes nothing.
//!
//! Everything is read from the store (the ledger is committed with the
//! tiles; see `pipeline::ledger`), so a downstream job waits on it instead
//! of a fixed delay, whichever host it asks. Each takes `?instance=NAME`
//! to read another instance's ledger of a scaled-out pipeline (every
//! instance keeps its own, complete by the whole pipeline's watermark);
//! without it, the ledger of the instance serving.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{on_store, ApiError, AppState};
use crate::pipeline::ledger::{ChangeRecord, LedgerState, OutputLedger, TILES_OUTPUT};
use crate::stores::{StoreError, TileStore};

/// Where the change log of one pipeline instance is read from.
#[derive(Clone, Debug)]
pub struct LedgerAt {
    pub pipeline: String,
    pub base: String,
    /// The outputs it describes: `tiles` and every SMB output.
    pub outputs: Vec<String>,
}

impl LedgerAt {
    pub fn of(cfg: &crate::config::Config) -> Self {
        let (pipeline, base) = crate::pipeline::ledger_location(cfg);
        let outputs = std::iter::once(TILES_OUTPUT.to_string())
            .chain(cfg.outputs.iter().map(|o| o.name().to_string()))
            .collect();
        LedgerAt {
            pipeline,
            base,
            outputs,
        }
    }

    /// The same pipeline's ledger of instance `name` (`None`: this one).
    pub fn instance(&self, name: Option<&str>) -> Result<LedgerAt, ChangeLogError> {
        let Some(name) = name else {
            return Ok(self.clone());
        };
        let ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !ok {
            return Err(ChangeLogError::BadInstance(name.to_string()));
        }
        Ok(LedgerAt {
            base: crate::pipeline::ledger::base(&crate::stores::author("ledger", name)),
            ..self.clone()
        })
    }

    fn consumer_key(&self, name: &str) -> String {
        format!("{}consumer/{name}", self.base)
    }

    /// The committed ledgers.
    pub fn read(&self, store: &dyn TileStore) -> Result<LedgerState, ChangeLogError> {
        Ok(LedgerState::read(store, &self.pipeline, &self.base)?)
    }

    /// The completeness of one output (`tiles` when `None`): how far its
    /// event time is complete and its partitions overlapping
    /// [`from`, `to`), each with its state.
    pub fn completeness(
        &self,
        store: &dyn TileStore,
        output: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<serde_json::Value, ChangeLogError> {
        let output = output.unwrap_or(TILES_OUTPUT);
        if !self.outputs.iter().any(|o| o == output) {
            return Err(ChangeLogError::UnknownOutput {
                output: output.to_string(),
                known: self.outputs.join(", "),
            });
        }
        let mut state = self.read(store)?;
        let ledger = state.outputs.remove(output).unwrap_or_default();
        Ok(completeness_json(output, &ledger, from, to))
    }

    /// The changes above `since`, or above what `consumer` committed.
    pub fn changes(
        &self,
        store: &dyn TileStore,
        since: Option<u64>,
        consumer: Option<&str>,
    ) -> Result<Changes, ChangeLogError> {
        let since = match (since, consumer) {
            (Some(_), Some(_)) => return Err(ChangeLogError::SinceAndConsumer),
            (Some(n), None) => n,
            (None, Some(name)) => self.committed(store, name)?.unwrap_or(0),
            (None, None) => 0,
        };
        let state = self.read(store)?;
        Ok(Changes {
            since,
            changes: state.changes_since(since),
            last_change: state.last_change(),
        })
    }

    /// The high watermark `name` committed, if it ever did.
    pub fn committed(
        &self,
        store: &dyn TileStore,
        name: &str,
    ) -> Result<Option<u64>, ChangeLogError> {
        check_name(name)?;
        store
            .position(&self.pipeline, &self.consumer_key(name))?
            .map(|v| {
                <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| ChangeLogError::Malformed(name.to_string()))
            })
            .transpose()
    }

    /// Commits `name`'s high watermark; above the last change is refused
    /// and writes nothing.
    pub fn commit(
        &self,
        store: &dyn TileStore,
        name: &str,
        high_watermark: u64,
    ) -> Result<(), ChangeLogError> {
        check_name(name)?;
        let last = self.read(store)?.last_change();
        if high_watermark > last {
            return Err(ChangeLogError::AboveLast {
                high_watermark,
                last,
            });
        }
        Ok(store.put_position(
            &self.pipeline,
            &self.consumer_key(name),
            &high_watermark.to_be_bytes(),
        )?)
    }
}

/// Why a change-log call failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeLogError {
    #[error("consumer name `{0}`: 1 to 64 of A-Z a-z 0-9 - _ .")]
    BadName(String),
    #[error("instance `{0}`: 1 to 64 of A-Z a-z 0-9 - _")]
    BadInstance(String),
    #[error("give `since` or `consumer`, not both")]
    SinceAndConsumer,
    #[error("high_watermark {high_watermark} is above the last change, {last}")]
    AboveLast { high_watermark: u64, last: u64 },
    #[error("no output `{output}` here (outputs: {known})")]
    UnknownOutput { output: String, known: String },
    #[error("consumer `{0}`: malformed high watermark in the store")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ChangeLogError> for ApiError {
    fn from(e: ChangeLogError) -> Self {
        match e {
            ChangeLogError::Store(e) => e.into(),
            ChangeLogError::Malformed(_) => ApiError::Internal(e.to_string()),
            ChangeLogError::UnknownOutput { .. } => ApiError::NotFound(e.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

/// The ledger of `instance` (`None`: the one serving) of the pipeline here.
fn ledger_at(s: &AppState, instance: Option<&str>) -> Result<LedgerAt, ApiError> {
    let here = s
        .ledger
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no pipeline configured here".into()))?;
    Ok(here.instance(instance)?)
}

#[derive(Deserialize)]
pub(super) struct Range {
    output: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    instance: Option<String>,
}

pub(super) async fn completeness(
    State(s): State<AppState>,
    Query(r): Query<Range>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (at, store) = (ledger_at(&s, r.instance.as_deref())?, s.store.clone());
    let answer =
        on_store(move || Ok(at.completeness(store.as_ref(), r.output.as_deref(), r.from, r.to)?));
    Ok(Json(answer.await?))
}

/// One output's completeness as the API and the CLI show it.
fn completeness_json(
    output: &str,
    ledger: &OutputLedger,
    from: Option<i64>,
    to: Option<i64>,
) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = ledger
        .partitions
        .values()
        .filter(|p| from.is_none_or(|f| p.end_ms > f) && to.is_none_or(|t| p.start_ms < t))
        .map(|p| {
            let mut v = serde_json::to_value(p).expect("a record serializes");
            v["state"] = if p.completed.is_some() {
                "complete"
            } else {
                "open"
            }
            .into();
            v
        })
        .collect();
    serde_json::json!({
        "output": output,
        "complete_through_ms": ledger.complete_through_ms,
        "partitions": partitions,
    })
}

#[derive(Deserialize)]
pub(super) struct ChangesQuery {
    since: Option<u64>,
    consumer: Option<String>,
    instance: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct InstanceQuery {
    instance: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct Changes {
    /// The high watermark the answer starts after.
    pub since: u64,
    pub changes: Vec<ChangeRecord>,
    /// The newest change number: what to commit once these are processed.
    pub last_change: u64,
}

pub(super) async fn changes(
    State(s): State<AppState>,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<Changes>, ApiError> {
    let (at, store) = (ledger_at(&s, q.instance.as_deref())?, s.store.clone());
    let answer =
        on_store(move || Ok(at.changes(store.as_ref(), q.since, q.consumer.as_deref())?));
    Ok(Json(answer.await?))
}

fn check_name(name: &str) -> Result<(), ChangeLogError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ChangeLogError::BadName(name.to_string()))
    }
}

pub(super) async fn get_consumer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<InstanceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let at = ledger_at(&s, q.instance.as_deref())?;
    let (store, n) = (s.store.clone(), name.clone());
    let hw = on_store(move || Ok(at.committed(store.as_ref(), &n)?))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("consumer `{name}` has committed nothing")))?;
    Ok(Json(
        serde_json::json!({ "consumer": name, "high_watermark": hw }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Commit {
    high_watermark: u64,
}

pub(super) async fn put_consumer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<InstanceQuery>,
    body: Result<Json<Commit>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(c) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let at = ledger_at(&s, q.instance.as_deref())?;
    let (store, n) = (s.store.clone(), name.clone());
    on_store(move || Ok(at.commit(store.as_ref(), &n, c.high_watermark)?)).await?;
    Ok(Json(
        serde_json::json!({ "consumer": name, "high_watermark": c.high_watermark }),
    ))
}
