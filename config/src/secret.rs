//! A configuration value that must never reach a log line.
//!
//! How a secret is written, and resolved at load time (before the typed config exists):
//! - `file:PATH`: the file's content, trailing newlines removed (`PATH` may use `${NAME}` and is
//!   relative to the config file);
//! - `credential:NAME`: `$CREDENTIALS_DIRECTORY/NAME`, from systemd's `LoadCredential=NAME:…`;
//! - `enc:…`: opened with the connector's key (`[spool] key_file` or `<state_dir>/keys/spool.key`,
//!   see [`crate::secrets`]);
//! - anything else: the text with `${NAME}` expanded. A variable's value is used as is, never
//!   read as `file:`/`enc:` itself.
//!
//! The loader recognises secret keys by name: `password`, `client_secret`, any key ending in
//! `_password`, `_secret` or `_token`, and `[zerobus] client_id`. A new `Secret` field must be
//! named so (or be added to `load::is_secret`), or its value is taken literally.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// A secret as written in the file (`${ENV}`, `file:PATH`, `credential:NAME`, `enc:…` or a
/// literal) or, once resolved, its value. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, Encode, Decode)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        assert_eq!(secret.expose(), "hunter2");
    }
}
