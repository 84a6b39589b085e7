//! `loadgen prepare-h2load`: what an h2load run of a gRPC unary call needs. The body file is the
//! 5-byte gRPC prefix (0 = uncompressed, 4-byte big-endian length) and the encoded message;
//! the headers it needs besides `content-type: application/grpc` and `te: trailers` are printed
//! on stdout, one per line.

use std::time::Duration;

use anyhow::Context;
use flashsale_client::mint::Role;
use flashsale_client::pb;
use prost::Message;

use crate::cli::{H2loadKind, PrepareH2loadArgs};
use crate::setup::{self, SaleSpec};
use crate::target::{authed, bearer, mint, Session};

/// A gRPC length-prefixed message.
pub fn frame(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = Vec::with_capacity(5 + encoded.len());
    body.push(0);
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

/// `loadgen prepare-h2load`.
pub async fn run(args: PrepareH2loadArgs) -> anyhow::Result<()> {
    match args.kind {
        // grpc.health.v1.HealthCheckRequest { service: "" } encodes to nothing.
        H2loadKind::Health => write(&args.body, &[0, 0, 0, 0, 0]),
        H2loadKind::SoldOut => sold_out(args).await,
    }
}

fn write(path: &std::path::Path, body: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))
}

/// A sale of one unit, bought by one buyer and so ENDED (sold out); the body is another
/// buyer's Purchase of it, refused on every call.
async fn sold_out(args: PrepareH2loadArgs) -> anyhow::Result<()> {
    let session = Session::open(&args.target).await?;
    let keys = session.keys_for("prepare-h2load --kind sold-out")?;
    let tag = setup::run_tag();
    let spec = SaleSpec {
        units: 1,
        per_user_limit: 0,
        max_per_purchase: 1,
        window: Duration::from_secs(24 * 3600),
        hold_seconds: 0,
        queue: None,
        start_in: Duration::ZERO,
    };
    let sale = setup::create_sale(&session, &spec, &tag).await?;
    let first = bearer(&mint(keys, &format!("h2load-{tag}-first"), "First", Role::Buyer)?)?;
    session
        .pool
        .purchase()
        .purchase(authed(
            pb::PurchaseRequest {
                admission_pass: String::new(),
                sale_id: sale.id.clone(),
                quantity: 1,
                idempotency_key: "first".into(),
            },
            &first,
        ))
        .await
        .context("buying the only unit")?;
    let sale = setup::get_sale(&session, &sale.id).await?;
    anyhow::ensure!(
        sale.status() == pb::SaleStatus::Ended,
        "the one-unit sale did not end after its only unit was sold"
    );
    let token = mint(keys, &format!("h2load-{tag}-late"), "Late", Role::Buyer)?;
    let request = pb::PurchaseRequest {
        admission_pass: String::new(),
        sale_id: sale.id.clone(),
        quantity: 1,
        idempotency_key: "late".into(),
    };
    write(&args.body, &frame(&request))?;
    eprintln!("sold-out sale {} ({:?}); body {}", sale.id, sale.end_reason(), args.body.display());
    println!("authorization: Bearer {token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_length() {
        let request = pb::PurchaseRequest {
            admission_pass: String::new(),
            sale_id: "s".into(),
            quantity: 1,
            idempotency_key: "k".into(),
        };
        let body = frame(&request);
        assert_eq!(body[0], 0);
        assert_eq!(u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize, body.len() - 5);
        assert_eq!(pb::PurchaseRequest::decode(&body[5..]).unwrap(), request);
    }
}
