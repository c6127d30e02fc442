//! Guest authentication: signed access tokens and single-use refresh tokens.
//!
//! An access token is `base64url(claims JSON) "." base64url(HMAC-SHA256)`,
//! checked without any lookup. A refresh token is a random 32-byte secret
//! whose hash the store keeps ([`crate::store::Store::take_refresh`]): using
//! it returns a new pair and retires it, so it works once, and it outlives
//! a restart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::store::RefreshGrant;

type HmacSha256 = Hmac<Sha256>;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is wrong")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// Signs and checks access tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    secret: Vec<u8>,
    pub access_ttl: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("TokenKeys").field("access_ttl", &self.access_ttl).finish_non_exhaustive()
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl TokenKeys {
    pub fn new(secret: impl Into<Vec<u8>>, access_ttl: Duration) -> Self {
        TokenKeys { secret: secret.into(), access_ttl }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    pub fn issue(&self, sub: &str, name: &str) -> (String, Claims) {
        let claims = Claims { sub: sub.to_owned(), name: name.to_owned(), exp: now_unix() + self.access_ttl.as_secs() };
        let body = B64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        (format!("{body}.{sig}"), claims)
    }

    /// Signs a session id one instance asks another to use
    /// (crate::relay::SESSION): only instances that share the token secret
    /// can choose a session's id.
    pub fn sign_session(&self, session: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"plaza-session:");
        mac.update(session.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }

    /// Whether `sig` is [`TokenKeys::sign_session`]'s for `session` (in
    /// constant time).
    pub fn verify_session(&self, session: &str, sig: &str) -> bool {
        let Ok(sig) = B64.decode(sig) else { return false };
        let mut mac = self.mac();
        mac.update(b"plaza-session:");
        mac.update(session.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }

    /// Checks the signature first (in constant time), then the expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_unix())
    }

    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let raw = B64.decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// A fresh random id or secret: `bytes` random bytes, base64url.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS has randomness");
    B64.encode(buf)
}

/// What the store keeps of a refresh token: its SHA-256, base64url (a
/// leaked table reveals no usable token).
pub fn refresh_hash(token: &str) -> String {
    B64.encode(Sha256::digest(token.as_bytes()))
}

pub const REFRESH_TTL_SECS: u64 = 30 * 24 * 3600;

/// A new refresh token for a user, and what the store keeps of it.
#[derive(Debug)]
pub struct NewRefresh {
    pub token: String,
    pub hash: String,
    pub grant: RefreshGrant,
}

impl NewRefresh {
    pub fn issue(user_id: &str, name: &str) -> Self {
        let token = random_token(32);
        let hash = refresh_hash(&token);
        NewRefresh { token, hash, grant: RefreshGrant { user_id: user_id.into(), name: name.into(), expires_at: now_unix() + REFRESH_TTL_SECS } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"test secret".to_vec(), Duration::from_secs(900))
    }

    #[test]
    fn a_session_signature_holds_only_for_its_session_and_secret() {
        let sig = keys().sign_session("abc");
        assert!(keys().verify_session("abc", &sig));
        assert!(!keys().verify_session("abd", &sig));
        assert!(!TokenKeys::new(b"other secret".to_vec(), Duration::from_secs(900)).verify_session("abc", &sig));
        assert!(!keys().verify_session("abc", "not base64 !"));
        // Not interchangeable with a token's signature over the same text.
        assert!(!keys().verify_session("abc", ""));
    }

    #[test]
    fn issued_tokens_verify_and_carry_their_claims() {
        let (token, claims) = keys().issue("u1", "Ada");
        assert_eq!(keys().verify(&token), Ok(claims.clone()));
        assert_eq!(claims.sub, "u1");
        assert!(claims.exp > now_unix() + 800);
    }

    #[test]
    fn forged_tampered_and_expired_tokens_fail() {
        let (token, claims) = keys().issue("u1", "Ada");
        let other = TokenKeys::new(b"another secret".to_vec(), Duration::from_secs(900));
        assert_eq!(other.verify(&token), Err(TokenError::BadSignature));
        // Swap in claims for someone else, keep the signature.
        let forged_body = B64.encode(br#"{"sub":"admin","name":"x","exp":99999999999}"#);
        let sig = token.split_once('.').unwrap().1;
        assert_eq!(keys().verify(&format!("{forged_body}.{sig}")), Err(TokenError::BadSignature));
        assert_eq!(keys().verify("nonsense"), Err(TokenError::Malformed));
        assert_eq!(keys().verify("a.b!"), Err(TokenError::Malformed));
        assert_eq!(keys().verify_at(&token, claims.exp), Err(TokenError::Expired));
    }

    #[test]
    fn refresh_tokens_are_kept_only_as_their_hash() {
        let a = NewRefresh::issue("u1", "Ada");
        let b = NewRefresh::issue("u1", "Ada");
        assert_ne!(a.token, b.token, "each is fresh");
        assert_eq!(a.hash, refresh_hash(&a.token));
        assert!(!a.hash.contains(&a.token));
        assert_eq!(a.grant.user_id, "u1");
        assert!(a.grant.expires_at >= now_unix() + REFRESH_TTL_SECS - 1);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert!(!format!("{:?}", keys()).contains("test secret"));
    }
}
