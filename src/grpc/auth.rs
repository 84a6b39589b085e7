//! AuthService: Register and Login (no token needed; rate-limited per address).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{DisplayName, Email, Password};
use crate::pb;
use crate::service::App;

use super::convert::{timestamp, Violations};
use super::RateLimits;

/// The AuthService implementation.
pub struct AuthApi {
    /// The application.
    pub app: Arc<App>,
    /// Limits on Login/Register per address.
    pub limits: Arc<RateLimits>,
}

fn respond(session: crate::service::Session) -> Response<pb::AuthResponse> {
    let user = &session.user;
    Response::new(pb::AuthResponse {
        access_token: session.token,
        expires_at: Some(timestamp(session.expires_at)),
        user: Some(pb::User {
            id: user.id.to_string(),
            email: user.email.as_str().to_owned(),
            display_name: user.display_name.as_str().to_owned(),
            role: match user.role {
                crate::domain::Role::Buyer => pb::Role::Buyer,
                crate::domain::Role::Admin => pb::Role::Admin,
                crate::domain::Role::Payments => pb::Role::Payments,
                crate::domain::Role::Fulfillment => pb::Role::Fulfillment,
            }
            .into(),
        }),
    })
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::AuthResponse>, Status> {
        self.limits.login(self.limits.client_address(&request))?;
        let req = request.into_inner();
        let mut violations = Violations::default();
        let email = violations.check(Email::parse(&req.email));
        let name = violations.check(DisplayName::parse(&req.display_name));
        let password = violations.check(Password::parse(&req.password));
        let (email, name, password) = violations.finish((|| Some((email?, name?, password?)))())?;
        Ok(respond(self.app.register(email, name, password).await?))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::AuthResponse>, Status> {
        self.limits.login(self.limits.client_address(&request))?;
        let req = request.into_inner();
        // A malformed email or password cannot match an account: same answer as a wrong one.
        let (Ok(email), Ok(password)) = (Email::parse(&req.email), Password::parse(&req.password)) else {
            return Err(crate::service::ServiceError::BadCredentials.into());
        };
        Ok(respond(self.app.login(email, password).await?))
    }
}
