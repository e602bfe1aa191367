//! The DATA decoder: from the wire form (CRLF lines, dot-stuffed, ended by CRLF.CRLF) to the
//! stored form (LF lines, unstuffed). Works on any chunking of the input: state carries over
//! between `feed` calls, so the same bytes give the same result however they are split.
//!
//! RFC 5321 §4.1.1.4: end of data is only CRLF "." CRLF. A CR or LF that is not part of a
//! CRLF pair ends the transaction with an error at once (§2.3.8; the "SMTP smuggling"
//! family depends on servers that read a bare LF as a line end). The body stops growing at
//! the size limit while the rest is read and dropped, so memory stays bounded.
//!
//! Text lines of any length are kept as they are, as OpenSMTPD and Postfix do: system mail
//! carries long log lines, and refusing them would lose the report. Only the size limit
//! bounds a line.

use memchr::memchr2;

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataError {
    /// The body exceeded the size limit (552 after the final dot).
    TooBig,
    /// A CR or LF outside a CRLF pair: refused at once.
    BareEol,
}

/// Where the decoder stands after a `feed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataStatus {
    /// All input consumed; the message goes on.
    More,
    /// The message ended (final dot, or a bare CR/LF): input past it was not consumed.
    End(Result<(), DataError>),
}

#[derive(Debug)]
pub struct DataDecoder {
    max_size: u64,
    /// At the start of a line (the next byte may be a stuffing dot).
    bol: bool,
    /// The current line began with a dot, which was dropped.
    dot_line: bool,
    /// The previous byte was a CR; the next must be LF.
    cr: bool,
    /// Octets on the current line so far, the dropped dot included (only whether the line
    /// is exactly "." matters).
    line_len: usize,
    too_big: bool,
    eight_bit: bool,
}

impl DataDecoder {
    pub fn new(max_size: u64) -> DataDecoder {
        DataDecoder { max_size, bol: true, dot_line: false, cr: false, line_len: 0, too_big: false, eight_bit: false }
    }

    /// True when some octet had its high bit set (the body is 8-bit).
    pub fn saw_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Decodes `input` into `body`; returns the octets consumed and the status.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> (usize, DataStatus) {
        let mut i = 0;
        while i < input.len() {
            if self.cr {
                if input[i] != b'\n' {
                    return (i, DataStatus::End(Err(DataError::BareEol)));
                }
                i += 1;
                self.cr = false;
                if self.dot_line && self.line_len == 1 {
                    return (i, DataStatus::End(self.verdict()));
                }
                self.append(body, b"\n");
                self.bol = true;
                self.dot_line = false;
                self.line_len = 0;
                continue;
            }
            if self.bol {
                self.bol = false;
                if input[i] == b'.' {
                    self.dot_line = true;
                    self.line_len = 1;
                    i += 1;
                    continue;
                }
            }
            let rest = &input[i..];
            let (chunk, stop) = match memchr2(b'\r', b'\n', rest) {
                Some(j) => (&rest[..j], Some(rest[j])),
                None => (rest, None),
            };
            self.append(body, chunk);
            self.line_len = self.line_len.saturating_add(chunk.len());
            i += chunk.len();
            match stop {
                Some(b'\r') => {
                    self.cr = true;
                    i += 1;
                }
                Some(_) => return (i + 1, DataStatus::End(Err(DataError::BareEol))),
                None => {}
            }
        }
        (i, DataStatus::More)
    }

    fn append(&mut self, body: &mut Vec<u8>, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if body.len() as u64 + bytes.len() as u64 > self.max_size {
            self.too_big = true;
            // Nothing of this message will be kept: give the memory back now.
            *body = Vec::new();
            return;
        }
        if !self.eight_bit && !bytes.is_ascii() {
            self.eight_bit = true;
        }
        body.extend_from_slice(bytes);
    }

    fn verdict(&self) -> Result<(), DataError> {
        if self.too_big {
            Err(DataError::TooBig)
        } else {
            Ok(())
        }
    }
}

/// A deliberately simple reference decoder for differential tests and fuzzing: the whole
/// input at once, line by line. Returns the consumed length and the result, or `None` when
/// the input holds no end of message yet.
pub fn reference_decode(input: &[u8], max_size: u64) -> Option<(usize, Result<Vec<u8>, DataError>)> {
    let mut body = Vec::new();
    let mut too_big = false;
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        let eol = rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
        if rest[eol] == b'\n' {
            return Some((pos + eol + 1, Err(DataError::BareEol)));
        }
        match rest.get(eol + 1) {
            None => return None,
            Some(b'\n') => {}
            Some(_) => return Some((pos + eol + 1, Err(DataError::BareEol))),
        }
        let line = &rest[..eol];
        pos += eol + 2;
        if line == b"." {
            let result = if too_big { Err(DataError::TooBig) } else { Ok(body) };
            return Some((pos, result));
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if body.len() + line.len() + 1 > max_size as usize {
            too_big = true;
        }
        if !too_big {
            body.extend_from_slice(line);
            body.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(input: &[u8], max: u64, split: usize) -> Option<(usize, Result<Vec<u8>, DataError>)> {
        let mut d = DataDecoder::new(max);
        let mut body = Vec::new();
        let mut consumed = 0;
        for part in [&input[..split], &input[split..]] {
            let (n, status) = d.feed(part, &mut body);
            consumed += n;
            if let DataStatus::End(r) = status {
                return Some((consumed, r.map(|()| body)));
            }
        }
        None
    }

    const CASES: &[(&[u8], u64)] = &[
        (b"Subject: x\r\n\r\nHello\r\n.\r\n", 1000),
        (b".\r\n", 1000),
        (b"..leading dot\r\n...two\r\n.\r\nQUIT\r\n", 1000),
        (b"a\nb\r\n.\r\n", 1000),
        (b"a\rb\r\n.\r\n", 1000),
        (b"hello\n.\nMAIL FROM:<x@y>\r\n.\r\n", 1000),
        (b"0123456789\r\n0123456789\r\n.\r\n", 15),
        (b"partial line without end", 1000),
        (b"x\r\n.\r", 1000),
        (b"caf\xc3\xa9\r\n.\r\n", 1000),
    ];

    #[test]
    fn every_chunking_matches_the_reference() {
        let long = [vec![b'y'; 1200], b"\r\n.\r\n".to_vec()].concat();
        let mut cases: Vec<(&[u8], u64)> = CASES.to_vec();
        cases.push((&long, 5000));
        for (input, max) in cases {
            let want = reference_decode(input, max);
            for split in 0..=input.len() {
                assert_eq!(
                    decode_in_chunks(input, max, split),
                    want,
                    "{:?} split at {split}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(reference_decode(b"..x\r\n.\r\n", 100), Some((8, Ok(b".x\n".to_vec()))));
        assert_eq!(reference_decode(b"a\nb\r\n.\r\n", 100), Some((2, Err(DataError::BareEol))));
        assert_eq!(reference_decode(b"0123456789\r\n.\r\n", 5).map(|r| r.1), Some(Err(DataError::TooBig)));
        // A 3,000-octet line is kept whole; only the size limit bounds it.
        let long = [vec![b'y'; 3000], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(reference_decode(&long, 5000).map(|r| r.1), Some(Ok([vec![b'y'; 3000], b"\n".to_vec()].concat())));
        assert_eq!(reference_decode(&long, 2000).map(|r| r.1), Some(Err(DataError::TooBig)));
    }

    #[test]
    fn memory_stays_bounded_past_the_limit() {
        let mut d = DataDecoder::new(1024);
        let mut body = Vec::new();
        let line = [vec![b'z'; 500], b"\r\n".to_vec()].concat();
        for _ in 0..10_000 {
            assert_eq!(d.feed(&line, &mut body).1, DataStatus::More);
            assert!(body.capacity() <= 2048);
        }
        assert_eq!(d.feed(b".\r\n", &mut body), (3, DataStatus::End(Err(DataError::TooBig))));
    }
}
