//! Tokens: HS256 JWTs carrying everything the hot path needs (`sub`, `name`, `role`), so a
//! purchase never looks a user up, and the server's signing secret. Passwords are hashed in
//! [`crate::passwords`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::{DisplayName, Role, UnixMillis, UserId};

/// The claims of a flashsale token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user's display name (shown on leaderboards).
    pub name: String,
    /// "buyer" or "admin" (read through [`Role::parse`]).
    pub role: String,
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

/// Why a token was refused. The messages are what clients read: plain words, no library text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata, or one without the `Bearer` scheme.
    #[error("no bearer token: send the metadata `authorization: Bearer <token>`")]
    Missing,
    /// Not three base64url parts with a JSON header.
    #[error("the token is malformed: a JWT is three base64url parts separated by dots")]
    Malformed,
    /// Signed with another algorithm than HS256 (or `none`).
    #[error("the token's algorithm is not accepted: tokens are signed with HS256")]
    UnsupportedAlgorithm,
    /// The signature does not match: not issued with this service's secret, or altered.
    #[error("the token's signature does not match: it was not issued by this service or was altered")]
    BadSignature,
    /// Past its `exp`.
    #[error("the token has expired: sign in again for a new one")]
    Expired,
    /// Signed correctly but without the claims flashsale issues (`sub`, `name`, `role`, `exp`).
    #[error("the token's claims are not the ones this service issues")]
    BadClaims,
}

impl TokenError {
    /// A stable name for what is wrong (ErrorInfo metadata `problem`).
    pub fn problem(&self) -> &'static str {
        match self {
            Self::Missing => "MISSING",
            Self::Malformed => "MALFORMED",
            Self::UnsupportedAlgorithm => "UNSUPPORTED_ALGORITHM",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::Expired => "EXPIRED",
            Self::BadClaims => "BAD_CLAIMS",
        }
    }
}

/// Signing and verifying keys derived from the server's secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pages: crate::paging::PageTokens,
    admissions: crate::admission::Admissions,
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
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            pages: crate::paging::PageTokens::new(secret),
            admissions: crate::admission::Admissions::new(secret),
        }
    }

    /// The listings' page tokens, signed with a key derived from the same secret.
    pub fn pages(&self) -> &crate::paging::PageTokens {
        &self.pages
    }

    /// The waiting rooms' admission passes and shuffle seeds, keyed from the same secret.
    pub fn admissions(&self) -> &crate::admission::Admissions {
        &self.admissions
    }

    /// Signs a token for `sub` valid for `ttl` from `now`; returns it with its expiry.
    pub fn issue(&self, sub: &str, name: &str, role: Role, now: UnixMillis, ttl: Duration) -> (String, UnixMillis) {
        let iat = (now.0 / 1000).max(0) as u64;
        let exp = iat + ttl.as_secs();
        let claims = Claims { sub: sub.to_owned(), name: name.to_owned(), role: role.as_str().to_owned(), exp, iat };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail");
        (token, UnixMillis(exp as i64 * 1000))
    }

    /// Checks signature, algorithm and expiry (against the system clock) and the claims' shape.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            // Which part is wrong, in words: the header first (the verifier's own error for an
            // unknown algorithm is a JSON error). Only refused tokens pay for this look.
            if let Err(header) = check_algorithm(token) {
                return header;
            }
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::UnsupportedAlgorithm,
                // The header was read above: a JSON error now is in the claims.
                ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) | ErrorKind::ImmatureSignature => {
                    TokenError::BadClaims
                }
                _ => TokenError::Malformed,
            }
        })?;
        let claims = data.claims;
        let user_id = UserId::parse(&claims.sub).map_err(|_| TokenError::BadClaims)?;
        let name = DisplayName::parse(&claims.name).map_err(|_| TokenError::BadClaims)?;
        let role = Role::parse(&claims.role).map_err(|_| TokenError::BadClaims)?;
        Ok(Caller { user_id, display_name: name.as_str().into(), role })
    }

    /// Reads the bearer token out of an `authorization` header value and verifies it. The scheme
    /// is matched without regard to case (RFC 7235); a value without it has no bearer token.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Caller, TokenError> {
        let (scheme, token) = header.map(str::trim).and_then(|h| h.split_once(' ')).ok_or(TokenError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(TokenError::Missing);
        }
        self.verify(token.trim())
    }
}

/// Refuses a token whose header does not say HS256 (`none` included) before anything else is
/// read, so the refusal names the algorithm rather than whatever the verifier trips on.
fn check_algorithm(token: &str) -> Result<(), TokenError> {
    use base64::Engine;

    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    Ok(())
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
        assert_eq!(keys.verify(&token).unwrap_err(), TokenError::BadSignature);
        let old = UnixMillis(now().0 - 7_200_000);
        let (expired, _) = keys.issue("u1", "Ann", Role::Admin, old, Duration::from_secs(60));
        assert_eq!(keys.verify(&expired).unwrap_err(), TokenError::Expired);
        assert!(matches!(keys.verify_header(None), Err(TokenError::Missing)));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        use base64::Engine;
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        let keys = JwtKeys::new(SECRET);
        let (token, _) = keys.issue("u1", "Ann", Role::Buyer, now(), Duration::from_secs(60));
        let (header, rest) = token.split_once('.').unwrap();
        let (claims, _signature) = rest.split_once('.').unwrap();

        assert_eq!(keys.verify("not-a-jwt").unwrap_err(), TokenError::Malformed);
        assert_eq!(keys.verify("a.b.c.d").unwrap_err(), TokenError::Malformed);
        assert_eq!(keys.verify(&format!("{header}.{claims}.AAAA")).unwrap_err(), TokenError::BadSignature);
        let none = format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(keys.verify(&none).unwrap_err(), TokenError::UnsupportedAlgorithm);
        let rs256 = format!("{}.{claims}.AAAA", b64(r#"{"alg":"RS256","typ":"JWT"}"#));
        assert_eq!(keys.verify(&rs256).unwrap_err(), TokenError::UnsupportedAlgorithm);
        let (expired, _) =
            keys.issue("u1", "Ann", Role::Buyer, UnixMillis(now().0 - 7_200_000), Duration::from_secs(60));
        assert_eq!(keys.verify(&expired).unwrap_err(), TokenError::Expired);
        let (bad_sub, _) = keys.issue("", "Ann", Role::Buyer, now(), Duration::from_secs(60));
        assert_eq!(keys.verify(&bad_sub).unwrap_err(), TokenError::BadClaims);
        for error in [TokenError::Malformed, TokenError::BadSignature, TokenError::UnsupportedAlgorithm] {
            assert!(!error.to_string().contains("Error"), "no library text in {error}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        let keys = JwtKeys::new(SECRET);
        let (token, _) = keys.issue("u1", "Ann", Role::Buyer, now(), Duration::from_secs(60));
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(keys.verify_header(Some(&format!("{scheme} {token}"))).is_ok(), "{scheme}");
        }
        assert_eq!(keys.verify_header(Some(&token)).unwrap_err(), TokenError::Missing);
        assert_eq!(keys.verify_header(Some(&format!("Basic {token}"))).unwrap_err(), TokenError::Missing);
        assert_eq!(keys.verify_header(Some("Bearer ")).unwrap_err(), TokenError::Missing);
        assert_eq!(keys.verify_header(None).unwrap_err(), TokenError::Missing);
        assert!(TokenError::Missing.to_string().contains("authorization: Bearer <token>"));
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
