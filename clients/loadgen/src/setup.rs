//! What a rehearsal prepares through the API before the rush: its own product and an ACTIVE
//! sale (no hand-edited ids), and its buyers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flashsale_client::mint::Role;
use flashsale_client::pb;
use futures::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::Code;

use crate::rush::Refusal;
use crate::target::{authed, bearer, mint, Session};

/// One buyer: the user id (the token's subject) and the `Bearer` metadata of its token.
#[derive(Clone)]
pub struct Buyer {
    /// The user id the server sees.
    pub id: String,
    /// `Bearer <token>`.
    pub bearer: AsciiMetadataValue,
}

/// How buyers got their tokens, for the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerSource {
    /// Registered through AuthService/Register (Argon2 on the server per buyer).
    Registered,
    /// Tokens signed with the server's secret, as `flashsale token --role buyer` does.
    Minted,
}

impl std::fmt::Display for BuyerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Registered => "registered through AuthService/Register",
            Self::Minted => "tokens minted with the server's secret (no registration)",
        })
    }
}

/// The sale a rehearsal creates.
#[derive(Debug, Clone)]
pub struct SaleSpec {
    /// Units allocated (the product is created with exactly that inventory).
    pub units: i64,
    /// Per-user limit; 0 = unlimited.
    pub per_user_limit: u32,
    /// Largest quantity of one purchase.
    pub max_per_purchase: u32,
    /// Length of the window; the sale ends earlier when sold out.
    pub window: Duration,
    /// Checkout holds (0: none).
    pub hold_seconds: u32,
    /// A waiting room in front of the sale.
    pub queue: Option<pb::QueueOptions>,
    /// The sale starts this long after its creation (zero: at once).
    pub start_in: Duration,
}

/// A short random tag that keeps this run's names (emails, ids, keys) apart from earlier runs.
pub fn run_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Creates a product holding `spec.units` and an ACTIVE sale of all of them.
pub async fn create_sale(session: &Session, spec: &SaleSpec, tag: &str) -> anyhow::Result<pb::Sale> {
    let product = session
        .pool
        .admin()
        .create_product(authed(
            pb::CreateProductRequest {
                name: format!("loadgen {tag}"),
                description: "created by loadgen for a rehearsal".into(),
                initial_inventory: spec.units,
            },
            &session.admin,
        ))
        .await
        .context("CreateProduct")?
        .into_inner();
    let end = std::time::SystemTime::now() + spec.window;
    let end = end.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let sale = session
        .pool
        .admin()
        .create_sale(authed(
            pb::CreateSaleRequest {
                queue: spec.queue,
                product_id: product.id,
                allocated: spec.units,
                unit_price: Some(pb::Money { amount_minor: 1999, currency: "USD".into() }),
                per_user_limit: spec.per_user_limit,
                max_per_purchase: spec.max_per_purchase,
                start_time: (!spec.start_in.is_zero()).then(|| {
                    let start = (std::time::SystemTime::now() + spec.start_in)
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    prost_types::Timestamp { seconds: start.as_secs() as i64, nanos: start.subsec_nanos() as i32 }
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: end.as_secs() as i64,
                    nanos: end.subsec_nanos() as i32,
                }),
                hold_seconds: spec.hold_seconds,
            },
            &session.admin,
        ))
        .await
        .context("CreateSale")?
        .into_inner();
    Ok(sale)
}

/// Reads a sale through the Admin API.
pub async fn get_sale(session: &Session, sale_id: &str) -> anyhow::Result<pb::Sale> {
    Ok(session
        .pool
        .admin()
        .get_sale(authed(pb::GetSaleRequest { sale_id: sale_id.into() }, &session.admin))
        .await
        .context("GetSale")?
        .into_inner())
}

/// Ends the sale unless it has ended already (a rehearsal whose demand was below the stock).
pub async fn end_sale_if_open(session: &Session, sale_id: &str) -> anyhow::Result<pb::Sale> {
    let sale = get_sale(session, sale_id).await?;
    if sale.status() == pb::SaleStatus::Ended {
        return Ok(sale);
    }
    Ok(session
        .pool
        .admin()
        .end_sale(authed(pb::EndSaleRequest { sale_id: sale_id.into() }, &session.admin))
        .await
        .context("EndSale")?
        .into_inner())
}

/// `count` buyers, minted or registered.
pub async fn buyers(
    session: &Session,
    count: usize,
    mint_tokens: bool,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<(Vec<Buyer>, BuyerSource)> {
    if mint_tokens {
        let keys = session.keys_for("--mint-tokens")?;
        let buyers = (0..count)
            .map(|i| {
                let id = format!("lg-{tag}-{i}");
                let token = mint(keys, &id, &format!("Buyer {i}"), Role::Buyer)?;
                Ok(Buyer { id, bearer: bearer(&token)? })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((buyers, BuyerSource::Minted))
    } else {
        Ok((register(session, count, concurrency, tag).await?, BuyerSource::Registered))
    }
}

/// Registers `count` buyers, `concurrency` at a time, waiting out RATE_LIMITED answers.
async fn register(session: &Session, count: usize, concurrency: usize, tag: &str) -> anyhow::Result<Vec<Buyer>> {
    let progress = crate::stats::progress_bar(count as u64, "registering");
    let progress = Arc::new(progress);
    let results: Vec<anyhow::Result<(usize, Buyer)>> = futures::stream::iter(0..count)
        .map(|i| {
            let progress = progress.clone();
            async move {
                let buyer = register_one(session, i, tag).await?;
                progress.inc(1);
                Ok((i, buyer))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    progress.finish_and_clear();
    let mut buyers: Vec<(usize, Buyer)> = results.into_iter().collect::<anyhow::Result<_>>()?;
    buyers.sort_by_key(|(i, _)| *i);
    Ok(buyers.into_iter().map(|(_, b)| b).collect())
}

async fn register_one(session: &Session, i: usize, tag: &str) -> anyhow::Result<Buyer> {
    let request = pb::RegisterRequest {
        email: format!("lg-{tag}-{i}@loadgen.example"),
        display_name: format!("Buyer {i}"),
        password: format!("loadgen-{tag}-password"),
    };
    for attempt in 0u32.. {
        match session.pool.auth().register(request.clone()).await {
            Ok(response) => {
                let response = response.into_inner();
                let id = response.user.context("Register answered without a user")?.id;
                return Ok(Buyer { id, bearer: bearer(&response.access_token)? });
            }
            Err(status) if retryable(&status) && attempt < 50 => {
                tokio::time::sleep(Refusal::from_status(&status).retry_after(attempt)).await;
            }
            Err(status) => return Err(status).with_context(|| format!("registering buyer {i}")),
        }
    }
    unreachable!("the loop returns")
}

/// UNAVAILABLE and RATE_LIMITED are worth a retry with the same request.
pub fn retryable(status: &tonic::Status) -> bool {
    status.code() == Code::Unavailable || Refusal::from_status(status).reason == "RATE_LIMITED"
}

/// Every order of each buyer in the sale (ListMyOrders), `concurrency` calls at a time.
pub async fn list_orders(
    session: &Session,
    buyers: &[Buyer],
    sale_id: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<Vec<pb::Order>>> {
    let progress = Arc::new(crate::stats::progress_bar(buyers.len() as u64, "ListMyOrders"));
    let results: Vec<anyhow::Result<(usize, Vec<pb::Order>)>> = futures::stream::iter(buyers.iter().enumerate())
        .map(|(i, buyer)| {
            let progress = progress.clone();
            async move {
                let mut attempt = 0;
                let (mut orders, mut page_token) = (Vec::new(), String::new());
                loop {
                    let ask = pb::ListMyOrdersRequest { sale_id: sale_id.into(), page_size: 1000, page_token };
                    page_token = ask.page_token.clone();
                    match session.pool.purchase().list_my_orders(authed(ask, &buyer.bearer)).await {
                        Ok(response) => {
                            let page = response.into_inner();
                            orders.extend(page.orders);
                            if page.next_page_token.is_empty() {
                                break;
                            }
                            page_token = page.next_page_token;
                        }
                        Err(status) if retryable(&status) && attempt < 20 => {
                            tokio::time::sleep(Refusal::from_status(&status).retry_after(attempt)).await;
                            attempt += 1;
                        }
                        Err(status) => {
                            return Err(status).with_context(|| format!("ListMyOrders of buyer {}", buyer.id))
                        }
                    }
                }
                progress.inc(1);
                Ok((i, orders))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    progress.finish_and_clear();
    let mut listed: Vec<(usize, Vec<pb::Order>)> = results.into_iter().collect::<anyhow::Result<_>>()?;
    listed.sort_by_key(|(i, _)| *i);
    Ok(listed.into_iter().map(|(_, orders)| orders).collect())
}
