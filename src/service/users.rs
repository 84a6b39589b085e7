//! Accounts and tokens. Password hashing runs on the bounded pool ([`crate::passwords`]): when
//! it is full, Register and Login answer SIGN_IN_BUSY at once.

use crate::domain::{DisplayName, Email, Password, Role, UnixMillis, UserId, UserRecord};

use super::{App, ServiceError};

/// A user with a fresh token.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account.
    pub user: UserRecord,
    /// A signed JWT.
    pub token: String,
    /// When it expires.
    pub expires_at: UnixMillis,
}

/// A valid Argon2id hash of a random password: Login verifies against it when the email is
/// unknown, so both failures take as long and say the same.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2H0XQpYLmJvzuKd3Yk8wLuo4U8xcpj3AHxQFjQe6a3M";

impl App {
    /// Creates a buyer account and signs a token for it.
    pub async fn register(&self, email: Email, name: DisplayName, password: Password) -> Result<Session, ServiceError> {
        let password_hash = self.passwords.hash(password).await?;
        let user = UserRecord {
            id: UserId::generate(),
            email,
            display_name: name,
            role: Role::Buyer,
            password_hash,
            created_at: self.clock.now(),
        };
        self.records.create_user(user.clone()).await?;
        Ok(self.session(user))
    }

    /// Checks credentials and signs a token.
    pub async fn login(&self, email: Email, password: Password) -> Result<Session, ServiceError> {
        let user = self.records.user_by_email(&email).await?;
        let hash = user.as_ref().map_or(DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let valid = self.passwords.verify(password, hash).await?;
        match user {
            Some(user) if valid => Ok(self.session(user)),
            _ => Err(ServiceError::BadCredentials),
        }
    }

    /// Creates the configured admin account, or makes the existing one admin with this password.
    pub(super) async fn ensure_admin(&self, email: &str, password: &str) -> Result<(), ServiceError> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let user = UserRecord {
            id: UserId::generate(),
            email,
            display_name: DisplayName::parse("Admin")?,
            role: Role::Admin,
            password_hash: self.passwords.hash(password).await?,
            created_at: self.clock.now(),
        };
        let user = self.records.upsert_user_by_email(user).await?;
        tracing::info!(user = %user.id, "configured admin account ready");
        Ok(())
    }

    /// Signs a token for a service (a payment service's webhook), not a person: a fresh subject,
    /// `name` as its name, valid for `ttl`.
    pub fn service_token(&self, role: Role, name: &DisplayName, ttl: std::time::Duration) -> (String, UnixMillis) {
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        tracing::info!(role = role.as_str(), name = name.as_str(), "service token issued");
        self.keys.issue(UserId::generate().as_str(), name.as_str(), role, now, ttl)
    }

    fn session(&self, user: UserRecord) -> Session {
        let (token, expires_at) = self.keys.issue(
            user.id.as_str(),
            user.display_name.as_str(),
            user.role,
            crate::clock::Clock::now(&crate::clock::SystemClock),
            self.token_ttl,
        );
        Session { user, token, expires_at }
    }
}
