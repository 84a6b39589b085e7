//! Admission passes of the waiting rooms, and the seeds their pre-queues are drawn with.
//!
//! A pass is `<body>.<tag>`, both base64url: the body is `<sale>\n<buyer>\n<expiry ms>\n<ticket>`
//! and the tag the first 16 bytes of HMAC-SHA256 over the body, with a key derived from the
//! server's secret. Any node checks any node's pass from its text alone (no store lookup on the
//! purchase path): the signature, then the sale and buyer it is bound to, then its expiry. The
//! ticket (the admission's rank, unique in the sale) tells one admission's pass from another's.
//!
//! The shuffle seed of a sale's pre-queue is HMAC-SHA256(another derived key, sale id): secret,
//! the same on every node, different for every sale.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{SaleId, UnixMillis, UserId};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC a pass carries.
const MAC_BYTES: usize = 16;

/// Why a pass was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassProblem {
    /// None was sent.
    #[error("this sale has a waiting room: enter it (EnterQueue) and send the admission pass you are given")]
    Missing,
    /// Not a pass this service makes.
    #[error("the admission pass is malformed: send it unchanged")]
    Malformed,
    /// Altered, or signed by a server with another secret.
    #[error("the admission pass was not issued by this service, or was altered")]
    BadSignature,
    /// Issued to another buyer.
    #[error("the admission pass was issued to another buyer")]
    OtherBuyer,
    /// Issued for another sale.
    #[error("the admission pass was issued for another sale")]
    OtherSale,
    /// Its time is over.
    #[error("the admission pass expired: enter the waiting room again")]
    Expired {
        /// When it expired.
        at: UnixMillis,
    },
}

impl PassProblem {
    /// ErrorInfo metadata `problem` of ADMISSION_INVALID.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "MISSING",
            Self::Malformed => "MALFORMED",
            Self::BadSignature => "BAD_SIGNATURE",
            Self::OtherBuyer => "OTHER_BUYER",
            Self::OtherSale => "OTHER_SALE",
            Self::Expired { .. } => "EXPIRED",
        }
    }
}

/// Issues and checks admission passes; draws shuffle seeds.
#[derive(Clone)]
pub struct Admissions {
    passes: HmacSha256,
    seeds: HmacSha256,
}

impl std::fmt::Debug for Admissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admissions(***)")
    }
}

fn derive(secret: &[u8], purpose: &[u8]) -> HmacSha256 {
    let mut derive = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    derive.update(purpose);
    HmacSha256::new_from_slice(&derive.finalize().into_bytes()).expect("HMAC takes keys of any length")
}

impl Admissions {
    /// Keys derived from `secret` (never the secret itself).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            passes: derive(secret, b"flashsale admission passes v1"),
            seeds: derive(secret, b"flashsale shuffle seeds v1"),
        }
    }

    /// The pass of an admission.
    pub fn issue(&self, sale: &SaleId, buyer: &UserId, expires: UnixMillis, ticket: u64) -> String {
        let body = format!("{sale}\n{buyer}\n{}\n{ticket}", expires.0);
        let mut mac = self.passes.clone();
        mac.update(body.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(body), URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]))
    }

    /// Checks `pass` for `buyer` in `sale` at `now`.
    pub fn check(&self, pass: &str, sale: &SaleId, buyer: &UserId, now: UnixMillis) -> Result<(), PassProblem> {
        if pass.is_empty() {
            return Err(PassProblem::Missing);
        }
        let (body, tag) = pass.split_once('.').ok_or(PassProblem::Malformed)?;
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| PassProblem::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| PassProblem::Malformed)?;
        if tag.len() != MAC_BYTES {
            return Err(PassProblem::BadSignature);
        }
        let mut mac = self.passes.clone();
        mac.update(&body);
        mac.verify_truncated_left(&tag).map_err(|_| PassProblem::BadSignature)?;
        let body = String::from_utf8(body).map_err(|_| PassProblem::Malformed)?;
        let mut parts = body.split('\n');
        let (Some(for_sale), Some(for_buyer), Some(expires), Some(_ticket), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PassProblem::Malformed);
        };
        if for_sale != sale.as_str() {
            return Err(PassProblem::OtherSale);
        }
        if for_buyer != buyer.as_str() {
            return Err(PassProblem::OtherBuyer);
        }
        let expires = UnixMillis(expires.parse().map_err(|_| PassProblem::Malformed)?);
        if now >= expires {
            return Err(PassProblem::Expired { at: expires });
        }
        Ok(())
    }

    /// The seed `sale`'s pre-queue is drawn with.
    pub fn shuffle_seed(&self, sale: &SaleId) -> [u8; 32] {
        let mut mac = self.seeds.clone();
        mac.update(sale.as_str().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (SaleId, UserId) {
        (SaleId::parse("sale-1").unwrap(), UserId::parse("ann").unwrap())
    }

    #[test]
    fn a_pass_holds_for_its_buyer_and_sale_until_it_expires() {
        let keys = Admissions::new(b"secret");
        let (sale, ann) = ids();
        let pass = keys.issue(&sale, &ann, UnixMillis(1_000), 7);
        assert_eq!(keys.check(&pass, &sale, &ann, UnixMillis(999)), Ok(()));
        assert_eq!(
            keys.check(&pass, &sale, &ann, UnixMillis(1_000)),
            Err(PassProblem::Expired { at: UnixMillis(1_000) })
        );
        let bob = UserId::parse("bob").unwrap();
        assert_eq!(keys.check(&pass, &sale, &bob, UnixMillis(0)), Err(PassProblem::OtherBuyer));
        let other = SaleId::parse("sale-2").unwrap();
        assert_eq!(keys.check(&pass, &other, &ann, UnixMillis(0)), Err(PassProblem::OtherSale));
        assert_eq!(keys.check("", &sale, &ann, UnixMillis(0)), Err(PassProblem::Missing));
    }

    #[test]
    fn forged_altered_or_cut_passes_are_refused() {
        let keys = Admissions::new(b"secret");
        let (sale, ann) = ids();
        let pass = keys.issue(&sale, &ann, UnixMillis(1_000), 7);
        let forged = Admissions::new(b"another secret").issue(&sale, &ann, UnixMillis(1_000), 7);
        assert_eq!(keys.check(&forged, &sale, &ann, UnixMillis(0)), Err(PassProblem::BadSignature));
        // A later expiry, re-encoded with the old tag.
        let (_, tag) = pass.split_once('.').unwrap();
        let longer = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(format!("{sale}\n{ann}\n9999999\n7")));
        assert_eq!(keys.check(&longer, &sale, &ann, UnixMillis(0)), Err(PassProblem::BadSignature));
        assert_eq!(keys.check(&pass[..pass.len() - 2], &sale, &ann, UnixMillis(0)), Err(PassProblem::BadSignature));
        assert_eq!(keys.check("not a pass", &sale, &ann, UnixMillis(0)), Err(PassProblem::Malformed));
    }

    #[test]
    fn seeds_differ_by_sale_and_secret() {
        let (sale, _) = ids();
        let other = SaleId::parse("sale-2").unwrap();
        let keys = Admissions::new(b"secret");
        assert_eq!(keys.shuffle_seed(&sale), Admissions::new(b"secret").shuffle_seed(&sale));
        assert_ne!(keys.shuffle_seed(&sale), keys.shuffle_seed(&other));
        assert_ne!(keys.shuffle_seed(&sale), Admissions::new(b"other").shuffle_seed(&sale));
    }
}
