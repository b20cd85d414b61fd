//! Bearer tokens for the admin API: where they come from (config, a token
//! file, `TESSERA_ADMIN_TOKEN`) and checking one in constant time.
//!
//! Tokens are kept as SHA-256 digests and a presented token is compared
//! with every one of them without an early exit, so neither the time nor
//! the order of the comparisons says how much of a token was right.

use sha2::{Digest, Sha256};

use crate::config::{AdminConfig, AdminRole, MIN_TOKEN_CHARS};

/// The environment variable that adds one admin token (containers).
pub const TOKEN_ENV: &str = "TESSERA_ADMIN_TOKEN";

pub struct Tokens(Vec<([u8; 32], AdminRole)>);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file {path}: {message}")]
    File { path: String, message: String },
    #[error("{TOKEN_ENV} is shorter than {MIN_TOKEN_CHARS} characters")]
    ShortEnv,
}

impl Tokens {
    /// The tokens of `cfg`, its token file and the environment.
    pub fn load(cfg: &AdminConfig) -> Result<Tokens, TokenError> {
        let mut tokens: Vec<(String, AdminRole)> = cfg
            .tokens
            .iter()
            .map(|t| (t.token.clone(), t.role))
            .collect();
        if let Some(path) = &cfg.token_file {
            let err = |message: String| TokenError::File {
                path: path.display().to_string(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (role, token) = line
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| err(format!("line {}: expected `<role> <token>`", n + 1)))?;
                let role = match role {
                    "admin" => AdminRole::Admin,
                    "read" => AdminRole::Read,
                    other => {
                        return Err(err(format!(
                            "line {}: role `{other}` is neither `admin` nor `read`",
                            n + 1
                        )))
                    }
                };
                let token = token.trim();
                if token.chars().count() < MIN_TOKEN_CHARS {
                    return Err(err(format!(
                        "line {}: token shorter than {MIN_TOKEN_CHARS} characters",
                        n + 1
                    )));
                }
                tokens.push((token.to_string(), role));
            }
        }
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(TokenError::ShortEnv);
            }
            tokens.push((token, AdminRole::Admin));
        }
        Ok(Tokens(
            tokens
                .into_iter()
                .map(|(t, role)| (Sha256::digest(t.as_bytes()).into(), role))
                .collect(),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The role of `presented`, if it is one of the tokens (the highest
    /// role when it is listed twice).
    pub fn role_of(&self, presented: &str) -> Option<AdminRole> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut role = None;
        for (known, r) in &self.0 {
            let diff = known
                .iter()
                .zip(&digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                role = role.max(Some(*r));
            }
        }
        role
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminToken;

    #[test]
    fn tokens_from_config_and_file_with_their_roles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# ops\nread  reader-token-0123456789\n\nadmin admin-token-from-file-0123\n",
        )
        .unwrap();
        let cfg = AdminConfig {
            tokens: vec![AdminToken {
                token: "config-admin-token-0123".into(),
                role: AdminRole::Admin,
            }],
            token_file: Some(file.clone()),
            ..AdminConfig::default()
        };
        let t = Tokens::load(&cfg).unwrap();
        assert_eq!(t.role_of("config-admin-token-0123"), Some(AdminRole::Admin));
        assert_eq!(t.role_of("reader-token-0123456789"), Some(AdminRole::Read));
        assert_eq!(
            t.role_of("admin-token-from-file-0123"),
            Some(AdminRole::Admin)
        );
        assert_eq!(t.role_of("reader-token-012345678"), None);
        assert_eq!(t.role_of(""), None);

        std::fs::write(&file, "root some-long-token-0123456789\n").unwrap();
        assert!(
            matches!(Tokens::load(&cfg), Err(TokenError::File { message, .. }) if message.contains("role `root`"))
        );
        std::fs::write(&file, "admin short\n").unwrap();
        assert!(
            matches!(Tokens::load(&cfg), Err(TokenError::File { message, .. }) if message.contains("shorter"))
        );
    }
}
