//! The HTTP face's request head, as the face runs it: the head, then percent decoding of
//! the path and the `Range` field against an item size. Any bytes give a head, "read more"
//! or an error, never a panic; a range that parses lies inside the item.
#![no_main]

use stream::http_head::{MAX_HEAD, parse_head, parse_range, percent_decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes: the item size the range is checked against.
    let (size, head) = match data.split_first_chunk::<8>() {
        Some((s, rest)) => (u64::from_le_bytes(*s), rest),
        None => (0, data),
    };
    let head = &head[..head.len().min(MAX_HEAD)];
    if let Ok(Some(h)) = parse_head(head) {
        assert!(h.len <= head.len());
        let _ = percent_decode(&h.path);
        if let Ok(Some((offset, length))) = parse_range(h.range.as_deref(), size) {
            assert!(length > 0 && offset.checked_add(length).is_some_and(|e| e <= size));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = percent_decode(text);
        let _ = parse_range(Some(text), size);
    }
});
