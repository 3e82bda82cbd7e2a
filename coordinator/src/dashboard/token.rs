//! The dashboard's access token: read from its file at start (a file only its owner may read),
//! checked on every request without a timing side channel (the presented token's HMAC under a
//! key drawn at start is compared with the expected one by `ring::hmac::verify`). A browser that
//! presented the token once gets a session cookie instead: a random value drawn at start, not
//! the token, so the cookie (which other services on the same host may see) never carries the
//! secret that Prometheus also uses.

use std::path::{Path, PathBuf};

use medfed_certs::{PrivateFileError, read_owner_only};
use ring::hmac;
use ring::rand::SystemRandom;

use crate::config::MIN_DASHBOARD_TOKEN_LEN;

/// A token requests must present, and the session cookie that stands for it.
#[derive(Debug)]
pub struct AccessToken {
    key: hmac::Key,
    expected: hmac::Tag,
    session: String,
    expected_session: hmac::Tag,
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
    /// Group or others may read or write the file.
    #[error(
        "dashboard.token_file {path} has mode {mode:04o}: the token must be readable by its owner only; run `chmod 600 {path}`"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The OS random generator failed.
    #[error("cannot draw a random key to check the dashboard token")]
    Random,
}

impl AccessToken {
    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let bytes = read_owner_only(path).map_err(|e| match e {
            PrivateFileError::Read(source) => TokenError::Read {
                path: path.to_owned(),
                source,
            },
            PrivateFileError::Exposed(mode) => TokenError::Permissions {
                path: path.to_owned(),
                mode,
            },
        })?;
        let text = String::from_utf8(bytes).map_err(|e| TokenError::Read {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
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
        let random = SystemRandom::new();
        let key =
            hmac::Key::generate(hmac::HMAC_SHA256, &random).map_err(|_| TokenError::Random)?;
        let expected = hmac::sign(&key, token.as_bytes());
        let mut session = [0u8; 32];
        ring::rand::SecureRandom::fill(&random, &mut session).map_err(|_| TokenError::Random)?;
        let session = hex::encode(session);
        let expected_session = hmac::sign(&key, session.as_bytes());
        Ok(Self {
            key,
            expected,
            session,
            expected_session,
        })
    }

    /// Whether `presented` is the token.
    pub fn accepts(&self, presented: &str) -> bool {
        hmac::verify(&self.key, presented.as_bytes(), self.expected.as_ref()).is_ok()
    }

    /// The session cookie's value, for a browser that presented the token.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Whether `presented` is the session cookie's value.
    pub fn accepts_session(&self, presented: &str) -> bool {
        hmac::verify(
            &self.key,
            presented.as_bytes(),
            self.expected_session.as_ref(),
        )
        .is_ok()
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
        // The session cookie is not the token, and neither stands for the other.
        assert_ne!(token.session(), TOKEN);
        assert!(token.accepts_session(token.session()));
        assert!(!token.accepts_session(TOKEN));
        assert!(!token.accepts(token.session()));
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
    fn the_file_is_read_without_its_surrounding_whitespace_and_only_if_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("\n{TOKEN}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let error = AccessToken::read(&path).unwrap_err().to_string();
            assert!(
                error.contains("0644") && error.contains("chmod 600"),
                "{error}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(AccessToken::read(&path).unwrap().accepts(TOKEN));
        assert!(matches!(
            AccessToken::read(&dir.path().join("missing")),
            Err(TokenError::Read { .. })
        ));
    }
}
