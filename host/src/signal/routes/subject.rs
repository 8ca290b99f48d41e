//! Ids in NATS subjects and JetStream key-value keys.
//!
//! A peer id may hold any character but control characters (`.`, `*`, `>`,
//! spaces, `:` included); subjects and keys take `[-_=a-zA-Z0-9]` within a
//! token. Letters, digits, `-` and `_` stay as they are, every other byte
//! becomes `=` and two uppercase hex digits, so ids stay readable in the
//! directory and two ids never share a token. Hand-written: NATS defines
//! no escaping of its own, and the rule is four lines.

/// The subject/key token for `id`.
pub fn encode(id: &str) -> String {
    let mut token = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push('=');
            token.push_str(&format!("{byte:02X}"));
        }
    }
    token
}

/// The id a token stands for; `None` when the token is not one
/// [`encode`] makes.
pub fn decode(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut id = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3)?;
                let byte = u8::from_str_radix(hex, 16).ok()?;
                if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || hex.to_uppercase() != hex {
                    return None;
                }
                id.push(byte);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                id.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_single_tokens_and_come_back() {
        for id in ["dev-a", "ee:34:a1:44:2c:1c", "a.b", "*", ">", "a b", "x=41", "ünïcødé", "web_1", "=", "a..b"] {
            let token = encode(id);
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)), "{id:?} gives {token:?}");
            assert_eq!(decode(&token).as_deref(), Some(id));
        }
        assert_eq!(encode("ee:34"), "ee=3A34");
        assert_ne!(encode("a.b"), encode("a=2Eb"));
    }

    #[test]
    fn tokens_not_made_by_encode_are_refused() {
        for token in ["a.b", "=4", "=zz", "=41", "=3a", "a b", "=FF", ""] {
            if token.is_empty() {
                assert_eq!(decode(token).as_deref(), Some(""));
                continue;
            }
            assert_eq!(decode(token), None, "{token:?}");
        }
    }
}
