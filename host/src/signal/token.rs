//! Registration credentials: `v1.<expiry>.<mac>` where `expiry` is a Unix
//! time in seconds and `mac` the hex HMAC-SHA256 of `fogconnect-v1|<id>|<expiry>`
//! under the server's secret. The server needs no database: anyone holding
//! the secret can issue tokens (`fogconnect signal token`), and a token only
//! ever admits the id it was issued for. Time is passed in.

use ring::hmac;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `v1.<expiry>.<mac>`.
    #[error("malformed token")]
    Malformed,
    /// The expiry has passed.
    #[error("token expired")]
    Expired,
    /// The MAC does not match the id (wrong id, wrong secret, or forged).
    #[error("token is not valid for this id")]
    BadSignature,
}

fn message(id: &str, expiry: u64) -> String {
    format!("fogconnect-v1|{id}|{expiry}")
}

/// Issues a token for `id` that expires at `expiry` (Unix seconds).
pub fn issue(secret: &[u8], id: &str, expiry: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, message(id, expiry).as_bytes());
    format!("v1.{expiry}.{}", hex::encode(tag.as_ref()))
}

/// Checks `token` for `id` at time `now` (Unix seconds).
///
/// # Errors
/// [`TokenError`] when the token is malformed, expired or not for `id`.
pub fn verify(secret: &[u8], id: &str, token: &str, now: u64) -> Result<(), TokenError> {
    let mut parts = token.split('.');
    let (Some("v1"), Some(expiry), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let expiry: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(mac, &mut tag).map_err(|_| TokenError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, message(id, expiry).as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
    if now >= expiry {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test secret";

    #[test]
    fn a_token_admits_its_id_until_expiry() {
        let token = issue(SECRET, "ee:34:a1:44:2c:1c", 1000);
        assert_eq!(verify(SECRET, "ee:34:a1:44:2c:1c", &token, 999), Ok(()));
        assert_eq!(verify(SECRET, "ee:34:a1:44:2c:1c", &token, 1000), Err(TokenError::Expired));
    }

    #[test]
    fn a_token_does_not_admit_another_id_or_secret() {
        let token = issue(SECRET, "a", 1000);
        assert_eq!(verify(SECRET, "b", &token, 0), Err(TokenError::BadSignature));
        assert_eq!(verify(b"other", "a", &token, 0), Err(TokenError::BadSignature));
        // Extending the expiry breaks the signature.
        let forged = token.replacen("1000", "9999", 1);
        assert_eq!(verify(SECRET, "a", &forged, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in ["", "v1", "v1.1", "v2.1.00", "v1.x.00", "v1.1.zz", "v1.1.00.00", &format!("v1.1.{}", "g".repeat(64))]
        {
            assert_eq!(verify(SECRET, "a", t, 0), Err(TokenError::Malformed), "{t}");
        }
    }
}
