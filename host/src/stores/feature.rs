//! A feature definition as stores persist it.

use serde::{Deserialize, Serialize};

use crate::record::{Aggregation, FeatureSpec};

/// A registered feature: id assigned by the store, definition from the plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredFeature {
    pub id: u32,
    pub name: String,
    pub plugin: String,
    pub entity_field: String,
    pub aggregation: String,
    pub tile_sizes_secs: Vec<u32>,
    pub retention_secs: u64,
    pub windows_secs: Vec<u32>,
}

impl StoredFeature {
    pub fn from_spec(plugin: &str, spec: &FeatureSpec) -> Self {
        let mut sizes = spec.tile_sizes_secs.clone();
        sizes.sort_unstable();
        sizes.dedup();
        StoredFeature {
            id: 0,
            name: spec.name.clone(),
            plugin: plugin.to_string(),
            entity_field: spec.entity_field.clone(),
            aggregation: aggregation_name(spec.aggregation).to_string(),
            tile_sizes_secs: sizes,
            retention_secs: spec.retention_secs,
            windows_secs: spec.windows_secs.clone(),
        }
    }

    /// A definition as stores keep it (JSON).
    pub fn from_json(json: &str) -> Result<Self, super::StoreError> {
        serde_json::from_str(json).map_err(|e| super::StoreError::Corrupt {
            what: "feature",
            message: e.to_string(),
        })
    }

    pub fn aggregation(&self) -> Aggregation {
        match self.aggregation.as_str() {
            "sum" => Aggregation::Sum,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            "last" => Aggregation::Last,
            "mean" => Aggregation::Mean,
            _ => Aggregation::Count,
        }
    }

    pub fn sizes_ms(&self) -> Vec<i64> {
        self.tile_sizes_secs
            .iter()
            .map(|s| *s as i64 * 1000)
            .collect()
    }

    /// Whether tiles written under `self` stay meaningful under `other`.
    pub fn compatible_with(&self, other: &StoredFeature) -> bool {
        self.entity_field == other.entity_field
            && self.tile_sizes_secs == other.tile_sizes_secs
            && self.aggregation == other.aggregation
    }

    /// Checks what the host relies on: tile sizes present, each a multiple
    /// of the smallest, and a usable name.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 200 || self.name.contains('/') {
            return Err("name must be 1 to 200 characters without `/`".into());
        }
        if self.entity_field.is_empty() {
            return Err("entity field must not be empty".into());
        }
        let Some(&smallest) = self.tile_sizes_secs.first() else {
            return Err("at least one tile size is required".into());
        };
        if smallest == 0 {
            return Err("tile sizes must be positive".into());
        }
        if let Some(s) = self.tile_sizes_secs.iter().find(|s| **s % smallest != 0) {
            return Err(format!(
                "tile size {s}s is not a multiple of the smallest, {smallest}s"
            ));
        }
        Ok(())
    }
}

pub fn aggregation_name(a: Aggregation) -> &'static str {
    match a {
        Aggregation::Count => "count",
        Aggregation::Sum => "sum",
        Aggregation::Min => "min",
        Aggregation::Max => "max",
        Aggregation::Last => "last",
        Aggregation::Mean => "mean",
    }
}
