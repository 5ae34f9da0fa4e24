//! Users and how their credentials are stored: passwords as the Digest HA1,
//! `MD5(user:realm:password)` (what `wasmcast hash-password` prints), so the config never holds a
//! password and both Basic and Digest can be checked; bearer tokens as their SHA-256 (what
//! `wasmcast new-token` prints).

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use sha2::Sha256;

/// The realm every challenge names; HA1 values depend on it.
pub const REALM: &str = "wasmcast";

/// A stored credential: the Digest HA1 of a user's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordHash([u8; 16]);

impl PasswordHash {
    /// The HA1 itself.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The hash of `password` for `user`.
    pub fn of(user: &str, password: &str) -> PasswordHash {
        PasswordHash(Md5::digest(format!("{user}:{REALM}:{password}")).into())
    }

    /// Parses the `md5:HEX` form the config stores.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let hex = text.strip_prefix("md5:").ok_or_else(|| {
            "a password must be stored hashed as \"md5:…\"; run `wasmcast hash-password USER`"
                .to_owned()
        })?;
        let bytes = parse_hex::<16>(hex)
            .ok_or_else(|| "the hash after \"md5:\" must be 32 hex digits".to_owned())?;
        Ok(PasswordHash(bytes))
    }

    /// The `md5:HEX` form.
    pub fn to_config(&self) -> String {
        format!("md5:{}", hex(&self.0))
    }
}

/// A stored bearer token: its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The SHA-256 itself.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the `sha256:HEX` form the config stores.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| {
            "a token must be stored hashed as \"sha256:…\"; run `wasmcast new-token USER`"
                .to_owned()
        })?;
        let bytes = parse_hex::<32>(hex)
            .ok_or_else(|| "the hash after \"sha256:\" must be 64 hex digits".to_owned())?;
        Ok(TokenHash(bytes))
    }

    pub fn to_config(&self) -> String {
        format!("sha256:{}", hex(&self.0))
    }
}

/// What a user can log in with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<PasswordHash>,
    pub token: Option<TokenHash>,
}

impl From<PasswordHash> for Credentials {
    fn from(password: PasswordHash) -> Credentials {
        Credentials {
            password: Some(password),
            token: None,
        }
    }
}

/// Users by name.
pub type Users = BTreeMap<String, Credentials>;

/// Exactly `N` bytes written as `2 * N` hex digits.
fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        let hash = PasswordHash::of("alice", "secret");
        assert_eq!(PasswordHash::parse(&hash.to_config()), Ok(hash));
        assert!(PasswordHash::parse("secret").is_err());
        assert!(PasswordHash::parse("md5:12").is_err());
    }
}
