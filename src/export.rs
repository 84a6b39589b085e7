//! `flashsale export`: an operator's copy of a sale's orders, read through the paged
//! ListSaleOrders (admin or fulfillment token) as any client would, written as CSV or JSON
//! lines. A progress bar shows on a terminal. With `--out`, the orders go to `<out>.part`,
//! renamed to `<out>` once every page is written, so a file that exists is complete.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::config::{ExportArgs, ExportFormat};
use crate::pb;
use crate::pb::orders_service_client::OrdersServiceClient;

/// Attempts of one page when the server answers UNAVAILABLE (a restart, a backend blip).
const PAGE_ATTEMPTS: u32 = 6;

/// One order as the export writes it (the CSV columns, in order, and the JSON fields).
#[derive(Serialize)]
struct Row {
    order_id: String,
    sale_id: String,
    buyer_id: String,
    buyer_name: String,
    quantity: u32,
    unit_price_minor: i64,
    total_minor: i64,
    currency: String,
    status: String,
    created_at: String,
    expires_at: String,
    settled_at: String,
    payment_reference: String,
    idempotency_key: String,
}

impl From<pb::Order> for Row {
    fn from(order: pb::Order) -> Self {
        let time = |t: Option<prost_types::Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
        let status = pb::OrderStatus::try_from(order.status).unwrap_or_default().as_str_name();
        let (price, total) = (order.unit_price.unwrap_or_default(), order.total.unwrap_or_default());
        Self {
            order_id: order.id,
            sale_id: order.sale_id,
            buyer_id: order.buyer_id,
            buyer_name: order.buyer_name,
            quantity: order.quantity,
            unit_price_minor: price.amount_minor,
            total_minor: total.amount_minor,
            currency: price.currency,
            status: status.trim_start_matches("ORDER_STATUS_").to_owned(),
            created_at: time(order.created_at),
            expires_at: time(order.expires_at),
            settled_at: time(order.settled_at),
            payment_reference: order.payment_reference,
            idempotency_key: order.idempotency_key,
        }
    }
}

/// Writes rows in the chosen format.
enum Sink<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
}

impl<W: Write> Sink<W> {
    fn new(format: ExportFormat, out: W) -> Self {
        match format {
            ExportFormat::Csv => Self::Csv(Box::new(csv::Writer::from_writer(out))),
            ExportFormat::Jsonl => Self::Jsonl(out),
        }
    }

    fn write(&mut self, row: &Row) -> anyhow::Result<()> {
        match self {
            Self::Csv(out) => out.serialize(row)?,
            Self::Jsonl(out) => {
                serde_json::to_writer(&mut *out, row)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<W> {
        Ok(match self {
            Self::Csv(out) => out.into_inner().map_err(|e| e.into_error())?,
            Self::Jsonl(out) => out,
        })
    }
}

/// Runs `flashsale export`.
pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("{:?} is not a server address", args.addr))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut client = OrdersServiceClient::new(channel);
    let bearer: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {}", args.token.trim()).parse().context("the token is not header text")?;

    let (file, part) = match &args.out {
        Some(path) => {
            let part = path.with_extension(match path.extension() {
                Some(ext) => format!("{}.part", ext.to_string_lossy()),
                None => "part".to_owned(),
            });
            let file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
            (Some(file), Some(part))
        }
        None => (None, None),
    };
    let out: Box<dyn Write> = match file {
        Some(file) => Box::new(std::io::BufWriter::new(file)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut sink = Sink::new(args.format, out);

    let progress = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} orders {wide_bar} {per_sec} {eta}")
            .expect("a valid progress template"),
    );
    let mut page_token = String::new();
    let mut written = 0_u64;
    loop {
        let ask = pb::ListSaleOrdersRequest {
            sale_id: args.sale.clone(),
            page_size: args.page_size,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = fetch(&mut client, &bearer, ask).await?;
        if page_token.is_empty() {
            progress.set_length(u64::try_from(page.total_size).unwrap_or(0));
        }
        for order in page.orders {
            sink.write(&Row::from(order))?;
            written += 1;
        }
        progress.set_position(written);
        if progress.length().is_some_and(|len| written > len) {
            progress.set_length(written); // orders made since the first page
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut out = sink.finish()?;
    out.flush()?;
    drop(out);
    progress.finish_and_clear();
    if let (Some(part), Some(path)) = (part, &args.out) {
        std::fs::File::open(&part)?.sync_all()?;
        std::fs::rename(&part, path).with_context(|| format!("renaming {} to {}", part.display(), path.display()))?;
    }
    eprintln!("exported {written} orders of sale {}", args.sale);
    Ok(())
}

/// One page, retried on UNAVAILABLE with a growing pause.
async fn fetch(
    client: &mut OrdersServiceClient<tonic::transport::Channel>,
    bearer: &tonic::metadata::AsciiMetadataValue,
    ask: pb::ListSaleOrdersRequest,
) -> anyhow::Result<pb::ListSaleOrdersResponse> {
    let (mut pause, mut attempt) = (Duration::from_millis(200), 1);
    loop {
        let mut request = tonic::Request::new(ask.clone());
        request.metadata_mut().insert("authorization", bearer.clone());
        match client.list_sale_orders(request).await {
            Ok(page) => return Ok(page.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable && attempt < PAGE_ATTEMPTS => {
                tokio::time::sleep(pause).await;
                (pause, attempt) = (pause * 2, attempt + 1);
            }
            Err(status) => anyhow::bail!("ListSaleOrders refused: {:?} {}", status.code(), status.message()),
        }
    }
}
