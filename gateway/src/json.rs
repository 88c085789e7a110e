//! Finding where a JSON string ends, shared by the body peek (`proxy::read`) and the usage
//! reader (`sse`): both run it on every request, on short strings (keys, roles, model names)
//! and on long ones (a message's content).

/// Where the string that goes on at `at` ends or escapes: `Ok((i, high))`, the index of its
/// next `"` or `\\`, and whether a byte above 0x7F lies before it (the caller checks those
/// bytes as UTF-8: JSON text is UTF-8, and checking only the strings that hold such bytes, in
/// the same pass that finds their end, costs far less than a pass over the whole body).
/// `Err(i)`: a control character at `i` (none may be in a JSON string), or, with `i` the
/// length, the bytes end first.
#[inline(always)]
pub fn quote_or_escape(bytes: &[u8], at: usize) -> Result<(usize, bool), usize> {
    let mut i = at;
    let mut high = false;
    // Short strings end within a few bytes: eight at a time in a word (serde_json scans its
    // strings so) finds their end before a SIMD search has set up.
    let near = bytes.len().min(at + 32);
    while let Some(word) = bytes.get(i..near).and_then(<[u8]>::first_chunk::<8>) {
        let found = special_bytes(u64::from_le_bytes(*word));
        if found != 0 {
            // The lowest flagged byte is exact (higher ones may be borrows).
            i += (found.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    if i + 8 > near
        || bytes
            .get(i)
            .is_some_and(|&b| matches!(b, b'"' | b'\\' | 0..0x20 | 0x80..))
    {
        // Found, or fewer than eight bytes left before `near`: byte by byte.
        while let Some(&b) = bytes.get(i) {
            match b {
                b'"' | b'\\' => return Ok((i, high)),
                0..0x20 => return Err(i),
                _ if i >= near => break,
                _ => {
                    high |= b >= 0x80;
                    i += 1;
                }
            }
        }
    }
    // A long string: one SIMD search, and a reduction for control characters and bytes above
    // 0x7F, which runs 32 bytes at a time (a search that stops at the first hit goes byte by
    // byte). The hit is looked for only when there is one.
    let rest = &bytes[i..];
    let Some(end) = memchr::memchr2(b'"', b'\\', rest) else {
        return Err(bytes.len());
    };
    let (low, top) = rest[..end]
        .iter()
        .fold((0xFF, 0), |(low, top): (u8, u8), &b| {
            (low.min(b), top.max(b))
        });
    if low < 0x20 {
        return Err(i + rest[..end].iter().position(|&b| b < 0x20).unwrap_or(0));
    }
    Ok((i + end, high || top >= 0x80))
}

/// A word's bytes that end or escape a string, may not be in one (`"`, `\\`, below 0x20) or
/// start or continue a UTF-8 sequence (above 0x7F), flagged in their high bits. The lowest flag
/// is exact; a borrow may flag bytes above it.
#[inline(always)]
fn special_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
        | (w & HIGH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The word scan, the byte loop and the SIMD search agree with a plain byte search,
        /// wherever the string starts and however long it is.
        #[test]
        fn finds_what_a_byte_search_finds(
            bytes in prop::collection::vec(
                prop::sample::select(b"ab\"\\\x01\x1f \x7f\xc3".to_vec()), 0..120),
            at in any::<prop::sample::Index>(),
        ) {
            let at = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
            let expected = match bytes[at..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20) {
                Some(i) if bytes[at + i] < 0x20 => Err(at + i),
                Some(i) => Ok((at + i, bytes[at..at + i].iter().any(|&b| b >= 0x80))),
                None => Err(bytes.len()),
            };
            prop_assert_eq!(quote_or_escape(&bytes, at), expected);
        }
    }
}
