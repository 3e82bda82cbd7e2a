//! The dashboard's access token: read from its file at start, checked on every request without
//! a timing side channel (the presented token's HMAC under a key drawn at start is compared
//! with the expected one by `ring::hmac::verify`).

use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::SystemRandom;

use crate::config::MIN_DASHBOARD_TOKEN_LEN;

/// A token requests must present.
#[derive(Debug)]
pub struct AccessToken {
    key: hmac::Key,
    expected: hmac::Tag,
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("dashboard.token_file {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The token is too short to resist guessing.
    #[error(
        "dashboard.token_file {path}: the token has {found} characters; at least {MIN_DASHBOARD_TOKEN_LEN} are needed (for example `openssl rand -hex 32`)"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        found: usize,
    },
    /// The token holds characters that cannot travel in a header or cookie.
    #[error(
        "dashboard.token_file {path}: the token must be printable ASCII without spaces, `;` or `,`"
    )]
    BadCharacters {
        /// The file.
        path: PathBuf,
    },
    /// The OS random generator failed.
    #[error("cannot draw a random key to check the dashboard token")]
    Random,
}

impl AccessToken {
    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.trim(), path)
    }

    fn new(token: &str, path: &Path) -> Result<Self, TokenError> {
        if token.chars().count() < MIN_DASHBOARD_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_owned(),
                found: token.chars().count(),
            });
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            return Err(TokenError::BadCharacters {
                path: path.to_owned(),
            });
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| TokenError::Random)?;
        let expected = hmac::sign(&key, token.as_bytes());
        Ok(Self { key, expected })
    }

    /// Whether `presented` is the token.
    pub fn accepts(&self, presented: &str) -> bool {
        hmac::verify(&self.key, presented.as_bytes(), self.expected.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_token_itself_is_accepted() {
        let token = AccessToken::new(TOKEN, Path::new("t")).unwrap();
        assert!(token.accepts(TOKEN));
        assert!(!token.accepts(&TOKEN[1..]));
        assert!(!token.accepts(&format!("{TOKEN}0")));
        assert!(!token.accepts(""));
    }

    #[test]
    fn a_short_or_unprintable_token_is_refused_naming_the_file() {
        let short = AccessToken::new("secret", Path::new("dash.token")).unwrap_err();
        assert!(short.to_string().contains("dash.token") && short.to_string().contains("6"));
        let spaced = format!("{TOKEN} {TOKEN}");
        assert!(matches!(
            AccessToken::new(&spaced, Path::new("t")),
            Err(TokenError::BadCharacters { .. })
        ));
    }

    #[test]
    fn the_file_is_read_without_its_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("\n{TOKEN}\n")).unwrap();
        assert!(AccessToken::read(&path).unwrap().accepts(TOKEN));
        assert!(matches!(
            AccessToken::read(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
