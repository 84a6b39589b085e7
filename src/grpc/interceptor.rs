//! Authentication: an interceptor on AdminService, PurchaseService and OrdersService checks the bearer token
//! and puts the [`Caller`] into the request's extensions. Auth, Feeds, health and reflection
//! are served without it.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::{Caller, JwtKeys};
use crate::domain::Role;
use crate::service::ServiceError;

/// The interceptor: refuses requests without a valid token (UNAUTHENTICATED), otherwise stores
/// the caller for the handler. The token itself is never logged. The router clones the
/// service, and so the interceptor, for every call: the keys (with the validation's claim
/// sets) are shared, not copied.
pub fn authenticate(keys: Arc<JwtKeys>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let caller = keys.verify_header(header).map_err(ServiceError::from)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor stored.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ServiceError::from(crate::auth::TokenError::Missing).into())
}

/// The caller, who must be an admin.
pub fn require_admin<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Admin => Ok(caller),
        Role::Buyer => Err(ServiceError::AdminRequired.into()),
        role @ (Role::Payments | Role::Fulfillment) => Err(ServiceError::RoleNotAllowed(role).into()),
    }
}

/// The caller of ConfirmOrder: a buyer, an admin or a payment service.
pub fn require_payer<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Buyer | Role::Admin | Role::Payments => Ok(caller),
        role @ Role::Fulfillment => Err(ServiceError::RoleNotAllowed(role).into()),
    }
}

/// The caller, who must be allowed to read every order: an admin or a fulfillment system.
pub fn require_order_reader<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Admin | Role::Fulfillment => Ok(caller),
        role @ (Role::Buyer | Role::Payments) => Err(ServiceError::RoleNotAllowed(role).into()),
    }
}

/// The caller, who must be a person buying (a buyer or an admin), not a service.
pub fn require_buyer<T>(request: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(request)?;
    match caller.role {
        Role::Buyer | Role::Admin => Ok(caller),
        role @ (Role::Payments | Role::Fulfillment) => Err(ServiceError::RoleNotAllowed(role).into()),
    }
}
