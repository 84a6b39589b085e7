//! Tokens and passwords. Tokens are HS256 JWTs carrying everything the hot path needs (`sub`,
//! `name`, `role`), so a purchase never looks a user up. Passwords are hashed with Argon2id on
//! the blocking pool, never on the async runtime.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::{DisplayName, Password, Role, UnixMillis, UserId};

/// The claims of a flashsale token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user's display name (shown on leaderboards).
    pub name: String,
    /// "buyer" or "admin".
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

/// An authenticated caller, as handlers see it after the interceptor checked the token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub user_id: UserId,
    /// Public name.
    pub display_name: std::sync::Arc<str>,
    /// What they may do.
    pub role: Role,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `authorization: Bearer` metadata.
    #[error("missing bearer token")]
    Missing,
    /// Malformed, wrong signature or algorithm, expired, or claims out of shape.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Signing and verifying keys derived from the server's secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(***)")
    }
}

impl JwtKeys {
    /// Keys for `secret`. Only HS256 is accepted when verifying (so `alg: none` and key
    /// confusion fail), `exp` is required and checked with no leeway.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Signs a token for `sub` valid for `ttl` from `now`; returns it with its expiry.
    pub fn issue(&self, sub: &str, name: &str, role: Role, now: UnixMillis, ttl: Duration) -> (String, UnixMillis) {
        let iat = (now.0 / 1000).max(0) as u64;
        let exp = iat + ttl.as_secs();
        let claims = Claims { sub: sub.to_owned(), name: name.to_owned(), role, exp, iat };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        (token, UnixMillis(exp as i64 * 1000))
    }

    /// Checks signature, algorithm and expiry (against the system clock) and the claims' shape.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let user_id = UserId::parse(&claims.sub).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let name = DisplayName::parse(&claims.name).map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok(Caller { user_id, display_name: name.as_str().into(), role: claims.role })
    }

    /// Reads the bearer token out of an `authorization` header value and verifies it.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| TokenError::Invalid("authorization is not a Bearer token".into()))?;
        self.verify(token.trim())
    }
}

/// The signing secret: the configured one, else the one kept in `data_dir/jwt_secret`, else a
/// new random one written there (mode 0600) so tokens survive restarts.
pub fn load_or_create_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        anyhow::ensure!(secret.len() >= 32, "JWT_SECRET must be at least 32 bytes");
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(text.trim().as_bytes().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let bytes: [u8; 32] = rand::rng().random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, secret.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Hashes a password with Argon2id (PHC string) on the blocking pool.
pub async fn hash_password(password: Password) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let hash: Result<PasswordHash, _> = Argon2::default().hash_password(password.expose().as_bytes());
        hash.map(|hash| hash.to_string()).map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Checks a password against a PHC hash on the blocking pool.
pub async fn verify_password(password: Password, phc: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let hash = PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("stored hash is malformed: {e}"))?;
        Ok(Argon2::default().verify_password(password.expose().as_bytes(), &hash).is_ok())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> UnixMillis {
        crate::clock::Clock::now(&crate::clock::SystemClock)
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_caller() {
        let keys = JwtKeys::new(SECRET);
        let (token, _) = keys.issue("u1", "Ann", Role::Buyer, now(), Duration::from_secs(60));
        let caller = keys.verify_header(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(caller.user_id.as_str(), "u1");
        assert_eq!(caller.role, Role::Buyer);
    }

    #[test]
    fn refuses_other_secrets_expired_and_missing() {
        let keys = JwtKeys::new(SECRET);
        let other = JwtKeys::new(b"another secret of at least 32 bytes!!");
        let (token, _) = other.issue("u1", "Ann", Role::Admin, now(), Duration::from_secs(60));
        assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
        let old = UnixMillis(now().0 - 7_200_000);
        let (expired, _) = keys.issue("u1", "Ann", Role::Admin, old, Duration::from_secs(60));
        assert!(matches!(keys.verify(&expired), Err(TokenError::Invalid(_))));
        assert!(matches!(keys.verify_header(None), Err(TokenError::Missing)));
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let hash = hash_password(Password::parse("correct horse").unwrap()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(Password::parse("correct horse").unwrap(), hash.clone()).await.unwrap());
        assert!(!verify_password(Password::parse("wrong horse!").unwrap(), hash).await.unwrap());
    }

    #[test]
    fn secret_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(None, dir.path()).unwrap();
        let second = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(load_or_create_secret(Some("short"), dir.path()).is_err());
    }
}
