//! Page tokens of the listings (AIP-158): opaque to clients, signed by the server so that a
//! token is only ever read by the listing, with the filters, that issued it.
//!
//! A token names where the last page ended (the id of its last item: listings are keyset-paged
//! on ids, so pages stay stable while new items arrive). Its text is base64url of
//! `<listing>\n<last id>`, a dot, and base64url of the first 16 bytes of
//! HMAC-SHA256(key, `<listing>\n<filters>\n<last id>`). The key is derived from the server's
//! signing secret, so every node of a deployment reads every node's tokens. Tokens do not
//! expire: a page boundary stays meaningful as long as the ids do.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC a token carries.
const MAC_BYTES: usize = 16;

/// Default and largest page sizes of every listing.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Larger asks are read as this (AIP-158: coerced, not refused).
pub const MAX_PAGE_SIZE: usize = 1000;

/// The listings that page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// AdminService.ListProducts.
    Products,
    /// AdminService.ListSales.
    Sales,
    /// PurchaseService.ListMyOrders.
    MyOrders,
    /// OrdersService.ListSaleOrders.
    SaleOrders,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Sales => "sales",
            Self::MyOrders => "my-orders",
            Self::SaleOrders => "sale-orders",
        }
    }
}

/// Why a page token was refused (ErrorInfo metadata `problem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Not a token this service makes.
    #[error("the page token is malformed: pass next_page_token unchanged")]
    Malformed,
    /// Issued by another listing.
    #[error("the page token belongs to another listing")]
    OtherListing,
    /// Altered, issued with other filters, or by a server with another secret.
    #[error("the page token does not match this listing's filters, or was altered")]
    BadSignature,
}

impl TokenProblem {
    /// A stable name for what is wrong.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED",
            Self::OtherListing => "OTHER_LISTING",
            Self::BadSignature => "BAD_SIGNATURE",
        }
    }
}

/// Issues and reads page tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: HmacSha256,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(***)")
    }
}

impl PageTokens {
    /// Tokens signed with a key derived from `secret` (not the secret itself, so a page token
    /// can never stand for anything signed with it).
    pub fn new(secret: &[u8]) -> Self {
        let mut derive = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"flashsale page tokens v1");
        let key = derive.finalize().into_bytes();
        Self { key: HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length") }
    }

    fn mac(&self, listing: Listing, filters: &str, last: &str) -> HmacSha256 {
        let mut mac = self.key.clone();
        for part in [listing.tag(), "\n", filters, "\n", last] {
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The token of the page after the one that ended with `last`.
    pub fn issue(&self, listing: Listing, filters: &str, last: &str) -> String {
        let tag = self.mac(listing, filters, last).finalize().into_bytes();
        let body = format!("{}\n{last}", listing.tag());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(body), URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]))
    }

    /// Where the page `token` asks for starts (the last id of the page before), if the token
    /// was issued by `listing` with these `filters`; `None` for the first page (no token).
    pub fn read(&self, listing: Listing, filters: &str, token: &str) -> Result<Option<String>, TokenProblem> {
        if token.is_empty() {
            return Ok(None);
        }
        let (body, tag) = token.split_once('.').ok_or(TokenProblem::Malformed)?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenProblem::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenProblem::Malformed)?;
        if tag.len() != MAC_BYTES {
            // A shorter tag would be easier to guess.
            return Err(TokenProblem::BadSignature);
        }
        let body = String::from_utf8(body).map_err(|_| TokenProblem::Malformed)?;
        let (issuer, last) = body.split_once('\n').ok_or(TokenProblem::Malformed)?;
        if issuer != listing.tag() {
            return Err(TokenProblem::OtherListing);
        }
        self.mac(listing, filters, last).verify_truncated_left(&tag).map_err(|_| TokenProblem::BadSignature)?;
        Ok(Some(last.to_owned()))
    }
}

/// The page size to use for a request's `page_size`: 0 is the default, larger than the
/// maximum is the maximum; `None` for a negative size.
pub fn page_size(asked: i32) -> Option<usize> {
    match asked {
        0 => Some(DEFAULT_PAGE_SIZE),
        n if n < 0 => None,
        n => Some((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn a_token_reads_back_only_where_it_was_issued() {
        let t = tokens();
        let token = t.issue(Listing::SaleOrders, "sale=s1", "order-9");
        assert_eq!(t.read(Listing::SaleOrders, "sale=s1", &token), Ok(Some("order-9".to_owned())));
        assert_eq!(t.read(Listing::SaleOrders, "sale=s1", ""), Ok(None));
        assert_eq!(t.read(Listing::Sales, "sale=s1", &token), Err(TokenProblem::OtherListing));
        assert_eq!(t.read(Listing::SaleOrders, "sale=s2", &token), Err(TokenProblem::BadSignature));
        let other = PageTokens::new(b"another secret of at least 32 bytes!!");
        assert_eq!(other.read(Listing::SaleOrders, "sale=s1", &token), Err(TokenProblem::BadSignature));
    }

    #[test]
    fn altered_tokens_are_refused() {
        let t = tokens();
        let token = t.issue(Listing::Products, "", "p-1");
        let (body, tag) = token.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode("products\np-0");
        assert_eq!(t.read(Listing::Products, "", &format!("{forged_body}.{tag}")), Err(TokenProblem::BadSignature));
        assert_eq!(t.read(Listing::Products, "", &format!("{body}.AAAA")), Err(TokenProblem::BadSignature));
        assert_eq!(t.read(Listing::Products, "", &format!("{body}.")), Err(TokenProblem::BadSignature));
        for garbage in ["x", "not-base64!.x", ".", "a.b.c"] {
            assert!(t.read(Listing::Products, "", garbage).is_err(), "{garbage} accepted");
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(1_000_000), Some(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1), None);
    }
}
