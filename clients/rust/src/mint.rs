//! Tokens signed with a server's secret, as `flashsale token` prints them: for rehearsals and
//! tests that need many buyers without registering each (registration hashes a password per
//! buyer). Whoever holds the secret can mint any token: keep it out of buyers' apps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Purchase.
    Buyer,
    /// Purchase and administer.
    Admin,
}

/// The claims a flashsale server reads.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    role: &'a str,
    exp: u64,
    iat: u64,
}

/// Signs tokens with a server's secret.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter(***)")
    }
}

impl Minter {
    /// A minter for the server whose `JWT_SECRET` is `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self { key: EncodingKey::from_secret(secret) }
    }

    /// A token for user `sub` named `name` with `role`, valid for `ttl` from now.
    pub fn token(
        &self,
        sub: &str,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let role = match role {
            Role::Buyer => "buyer",
            Role::Admin => "admin",
        };
        let claims = Claims { sub, name, role, exp: iat + ttl.as_secs(), iat };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_claims_the_server_reads() {
        let token = Minter::new(b"0123456789abcdef0123456789abcdef")
            .token("u1", "Ann", Role::Admin, Duration::from_secs(60))
            .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        #[derive(serde::Deserialize)]
        struct Read {
            sub: String,
            name: String,
            role: String,
        }
        let read = jsonwebtoken::decode::<Read>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!((read.sub.as_str(), read.name.as_str(), read.role.as_str()), ("u1", "Ann", "admin"));
    }
}
