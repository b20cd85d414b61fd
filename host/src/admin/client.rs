//! The admin API's client, for the `tessera plugin ...` commands: one
//! blocking HTTP call per command, the answer's JSON returned as is.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Where the admin API is and the token to show it.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin API at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{status}: {message}")]
    Refused { status: u16, message: String },
    #[error("cannot use the CA certificate {path}: {message}")]
    CaCert { path: String, message: String },
}

/// An error and its causes, `: `-separated (reqwest's own message leaves
/// out why a request failed, e.g. the certificate it refused).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl AdminClient {
    /// `base` as `http://host:port` or `https://host:port`; `token` is
    /// sent as a bearer token; `ca_cert` (PEM) is trusted beside the
    /// system's roots.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120));
        if let Some(path) = ca_cert {
            let bad = |message: String| ClientError::CaCert {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
            http = http.add_root_certificate(cert);
        }
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http.build().map_err(|e| ClientError::Unreachable {
                url: base.to_string(),
                message: e.to_string(),
            })?,
        })
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
        url: &str,
    ) -> Result<Value, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            message: with_causes(&e),
        })?;
        let status = resp.status();
        let text = resp.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(body)
        } else {
            let message = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            })
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn list(&self) -> Result<Value, ClientError> {
        let url = self.url("/v1/plugins");
        self.send(self.http.get(&url), &url)
    }

    pub fn upload(
        &self,
        name: &str,
        version: &str,
        world: &str,
        component: Vec<u8>,
        config: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/versions/{version}"));
        let mut query = vec![("world", world)];
        if let Some(c) = config {
            query.push(("config", c));
        }
        let req = self
            .http
            .put(&url)
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(component);
        self.send(req, &url)
    }

    pub fn activate(&self, name: &str, version: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/activate"));
        let req = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "version": version }));
        self.send(req, &url)
    }

    pub fn rollback(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/rollback"));
        self.send(self.http.post(&url), &url)
    }

    pub fn quotas(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/quotas"));
        self.send(self.http.get(&url), &url)
    }

    /// Changes the given quota fields (`{"fuel_per_call": 1000, ...}`).
    pub fn set_quotas(&self, name: &str, change: &Value) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/quotas"));
        self.send(self.http.put(&url).json(change), &url)
    }

    /// Starts a shadow run of `version` (`max_share`: the host's default
    /// when `None`).
    pub fn shadow(
        &self,
        name: &str,
        version: &str,
        max_share: Option<f64>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/shadow"));
        let mut body = serde_json::json!({ "version": version });
        if let Some(share) = max_share {
            body["max_share"] = share.into();
        }
        self.send(self.http.post(&url).json(&body), &url)
    }

    pub fn shadow_report(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/shadow"));
        self.send(self.http.get(&url), &url)
    }

    pub fn stop_shadow(&self, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("/v1/plugins/{name}/shadow"));
        self.send(self.http.delete(&url), &url)
    }

    pub fn pipeline(&self) -> Result<Value, ClientError> {
        let url = self.url("/v1/pipeline");
        self.send(self.http.get(&url), &url)
    }
}
