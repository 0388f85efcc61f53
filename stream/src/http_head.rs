//! The HTTP face's request head: the head itself, `Range` and percent decoding of the
//! path. Pure functions over bytes (no I/O), public so the fuzz target drives exactly what
//! the face runs.

/// Largest request head accepted (a longer one gets 431).
pub const MAX_HEAD: usize = 8192;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 32;

/// What the face needs from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target, still percent-encoded.
    pub path: String,
    /// The `Range` field's value, if present and text.
    pub range: Option<String>,
    /// Bytes of the head (a request body, if any, starts here).
    pub len: usize,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not HTTP/1.x, or a malformed line.
    #[error("malformed request head")]
    Malformed,
    /// More than [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.
    #[error("request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} fields")]
    TooLarge,
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete (read more,
/// up to [`MAX_HEAD`] bytes).
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {
            let range = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("range"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_owned);
            Ok(Some(Head {
                method: req.method.unwrap_or("").to_owned(),
                path: req.path.unwrap_or("").to_owned(),
                range,
                len,
            }))
        }
        Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            Err(HeadError::TooLarge)
        }
        Err(_) => Err(HeadError::Malformed),
    }
}

/// A `Range` the face cannot serve (answered with 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable")]
pub struct Unsatisfiable;

/// The byte range `(offset, length)` a `Range` value asks of an item of `size` bytes:
/// `Ok(None)` for the whole item (no field, or a unit other than bytes, which RFC 9110
/// §14.2 says to ignore). Units are case-insensitive; one range per request.
pub fn parse_range(value: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(v) = value else { return Ok(None) };
    let v = v.trim();
    let Some((unit, spec)) = v.split_once('=') else {
        return Err(Unsatisfiable);
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if spec.contains(',') {
        // One range per request.
        return Err(Unsatisfiable);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let digits = |t: &str| -> Result<u64, Unsatisfiable> {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(Unsatisfiable);
        }
        // More digits than a u64 holds: past any item's end.
        Ok(t.parse().unwrap_or(u64::MAX))
    };
    let (start, end) = if a.is_empty() {
        let n = digits(b)?;
        if n == 0 || size == 0 {
            return Err(Unsatisfiable);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start = digits(a)?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            digits(b)?.min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end - start + 1)))
}

/// Decodes `%XX` escapes (other bytes pass through; a `%` without two hex digits stays);
/// bytes that are not UTF-8 become U+FFFD, so the name then matches nothing.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("Bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("BYTES = 0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 10))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 10))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 50))));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=+1-5"), 100), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=-"), 100), Err(Unsatisfiable));
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 100),
            Err(Unsatisfiable)
        );
        assert_eq!(
            parse_range(Some("bytes=0-99999999999999999999999"), 100),
            Ok(Some((0, 100)))
        );
        // Another unit is ignored: the whole item.
        assert_eq!(parse_range(Some("items=0-1"), 100), Ok(None));
    }

    #[test]
    fn percent_decoding_is_byte_safe() {
        assert_eq!(percent_decode("a%20b.ts"), "a b.ts");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("x%41"), "xA");
        // A multi-byte character right after '%' (this panicked slicing the str).
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%é"), "%é");
        assert_eq!(percent_decode("%c3%a9"), "é");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn heads() {
        let h = parse_head(b"GET /content/a%20b HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str()),
            ("GET", "/content/a%20b")
        );
        assert_eq!(h.range.as_deref(), Some("bytes=0-1"));
        assert_eq!(parse_head(b"GET /x HTTP/1.1\r\nHost:"), Ok(None));
        assert_eq!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        let mut long = b"GET /x HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_head(&long), Err(HeadError::TooLarge));
        let mut many = b"GET /x HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err(HeadError::TooLarge));
    }
}
