//! The `queue encryption` key as written in the configuration (or given on stdin): parsed
//! here so that the parser can check it without depending on the queue that uses it.

/// A key as written: 32 bytes of text (OpenSMTPD's form), or 64 hexadecimal digits.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim_end_matches(['\r', '\n']);
    let mut key = [0u8; 32];
    if text.len() == 32 {
        key.copy_from_slice(text.as_bytes());
        return Ok(key);
    }
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(key);
    }
    Err("the key must be 32 characters or 64 hexadecimal digits".into())
}
