//! The fast path: one flat JSON object (string, integer, boolean and null
//! values; no escapes) scanned by hand into the batch builder.
//!
//! It either fully validates and maps the object, or changes nothing and
//! returns `None`, and the caller runs the serde path, which handles every
//! valid JSON text and produces the error messages. So the fast path never
//! decides anything the serde path would decide differently; the
//! differential test below checks that on generated and mutated inputs.

use std::borrow::Cow;

use tessera_sdk::EventBatchBuilder;

use super::{apply_slot, finish_event, JsonParser, Value};

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Whether any byte of `w` is a quote, a backslash, a control character or
/// non-ASCII: the bytes a string scan must stop at (exact as a yes/no).
#[inline]
fn has_special_byte(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (control
        | zero_byte(w ^ (ONES * b'"' as u64))
        | zero_byte(w ^ (ONES * b'\\' as u64))
        | (w & HIGH))
        != 0
}

/// A string starting after its opening quote, without escapes or control
/// characters; returns the text and the index after the closing quote.
/// Scans eight bytes at a time and validates UTF-8 only when a byte is not ASCII.
#[inline]
fn scan_string(b: &[u8], start: usize) -> Option<(&str, usize)> {
    let mut i = start;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if has_special_byte(w) {
            break;
        }
        i += 8;
    }
    let mut ascii = true;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let text = &b[start..i];
                let text = if ascii {
                    // SAFETY: every byte of `text` was checked to be ASCII above
                    // (whole words by `has_special_byte`, the rest one by one).
                    unsafe { std::str::from_utf8_unchecked(text) }
                } else {
                    std::str::from_utf8(text).ok()?
                };
                return Some((text, i + 1));
            }
            b'\\' | 0..=0x1f => return None,
            0x80.. => {
                ascii = false;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// An integer in strict JSON grammar that fits 64 bits; returns its value and
/// the index after it.
fn scan_number(b: &[u8], start: usize) -> Option<(Value<'static>, usize)> {
    let mut i = start;
    let mut magnitude: u64 = 0;
    let digits = |i: &mut usize, acc: &mut u64| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *acc = acc.wrapping_mul(10).wrapping_add(u64::from(b[*i] - b'0'));
            *i += 1;
        }
        *i - s
    };
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    let n = digits(&mut i, &mut magnitude);
    if n == 0 || (n > 1 && b[int_start] == b'0') {
        return None;
    }
    let mut integer = true;
    let mut ignored = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i, &mut ignored) == 0 {
            return None;
        }
        integer = false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i, &mut ignored) == 0 {
            return None;
        }
        integer = false;
    }
    // Fractions, exponents and -0 are floats to serde_json, whose float
    // parsing may round differently from std's: leave them to it.
    if !integer || (negative && magnitude == 0) {
        return None;
    }
    // Up to 18 digits cannot overflow the accumulator; longer ones are parsed exactly.
    if n <= 18 {
        let v = magnitude as i64;
        return Some((Value::Int(if negative { -v } else { v }), i));
    }
    let text = std::str::from_utf8(&b[start..i]).ok()?;
    if let Ok(v) = text.parse::<i64>() {
        return Some((Value::Int(v), i));
    }
    if let Ok(v) = text.parse::<u64>() {
        return Some((Value::UInt(v), i));
    }
    None
}

/// Parses one flat object into a new event; `None` (with the builder
/// unchanged) whenever the serde path must decide.
pub fn parse_flat(
    p: &JsonParser,
    row: usize,
    b: &[u8],
    events: &mut EventBatchBuilder,
) -> Option<()> {
    let before = events.len();
    let result = scan(p, row, b, events);
    if result.is_none() && events.len() > before {
        events.cancel_event();
    }
    result
}

fn scan(p: &JsonParser, row: usize, b: &[u8], events: &mut EventBatchBuilder) -> Option<()> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    events.begin_event(row as u32, 0, 0);
    let (mut time, mut ty) = (None, None);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (key, next) = scan_string(b, i + 1)?;
            i = skip_ws(b, next);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let (value, next) = match *b.get(i)? {
                b'"' => {
                    let (s, next) = scan_string(b, i + 1)?;
                    (Value::Str(Cow::Borrowed(s)), next)
                }
                b't' if b[i..].starts_with(b"true") => (Value::Bool(true), i + 4),
                b'f' if b[i..].starts_with(b"false") => (Value::Bool(false), i + 5),
                b'n' if b[i..].starts_with(b"null") => (Value::Null, i + 4),
                b'-' | b'0'..=b'9' => scan_number(b, i)?,
                _ => return None,
            };
            if let Some(slot) = p.slot(key) {
                apply_slot(p, events, slot, value, &mut time, &mut ty).ok()?;
            }
            i = skip_ws(b, next);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    // A missing time or type is an error the serde path reports.
    if time.is_none() || (ty.is_none() && p.default_type.is_none()) {
        return None;
    }
    finish_event(p, events, time, ty, None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_sdk::{ParseOutputBuilder, Parser};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn value(r: &mut Rng) -> String {
        r.pick(&[
            "\"post-1\"",
            "\"like\"",
            "\"view\"",
            "\"a\\\"b\"",
            "\"caf\u{e9}\"",
            "\"\"",
            "12",
            "-0",
            "0.5",
            "1e3",
            "-2.5E-2",
            "007",
            "1.",
            "9223372036854775808",
            "18446744073709551616",
            "true",
            "false",
            "null",
            "{\"x\": 1}",
            "[1, 2]",
            "1700000000000",
            "\"1700000000000\"",
            "NaN",
            "-",
            "\"\\u0041\"",
            "\"a-long-post-id-0123456789\"",
            "\"a long text with caf\u{e9} in it\"",
            "\"a long text with an \\\" escape\"",
            "\"a long text\twith a tab\"",
            "\"seventeen bytes!!\"",
            "-12",
            "123456789012345678",
            "1234567890123456789",
            "-9223372036854775808",
            "-9223372036854775809",
            "00",
        ])
        .to_string()
    }

    fn object(r: &mut Rng) -> String {
        let keys = [
            "ts", "type", "post_id", "user_id", "dwell_ms", "n", "ok", "other", "ts",
        ];
        let n = r.next() % 6;
        let mut parts = Vec::new();
        for _ in 0..n {
            let k = r.pick(&keys);
            let v = if k == "ts" && !r.next().is_multiple_of(3) {
                "1700000000123".to_string()
            } else {
                value(r)
            };
            let v = if k == "type" && !r.next().is_multiple_of(3) {
                "\"like\"".to_string()
            } else {
                v
            };
            parts.push(format!(
                "{}\"{k}\"{}:{}{v}",
                r.pick(&["", " "]),
                r.pick(&["", " "]),
                r.pick(&["", " ", "\n"])
            ));
        }
        format!(
            "{{{}}}{}",
            parts.join(","),
            r.pick(&["", " ", " x", "}", "\t"])
        )
    }

    fn mutate(r: &mut Rng, s: &str) -> Vec<u8> {
        let mut b = s.as_bytes().to_vec();
        match r.next() % 4 {
            0 if !b.is_empty() => {
                let at = (r.next() % b.len() as u64) as usize;
                b.truncate(at);
            }
            1 if !b.is_empty() => {
                let at = (r.next() % b.len() as u64) as usize;
                b[at] = [b'"', b',', b':', b'{', b'}', b'\\', 0xff, b'0'][(r.next() % 8) as usize];
            }
            _ => {}
        }
        b
    }

    /// The fast path plus fallback gives exactly what the serde path gives.
    #[test]
    fn fast_path_agrees_with_serde_on_generated_and_mutated_objects() {
        let configs = [
            r#"{"fields": {"dwell_ms": "float64", "n": "int64", "ok": "boolean"}}"#,
            r#"{"time_format": "unix_s", "default_type": "click", "fields": {"dwell_ms": "utf8"}}"#,
        ];
        let mut r = Rng(0x1234_5678_9abc_def1);
        let mut fast_hits = 0;
        for cfg in configs {
            let p = JsonParser::init(cfg).unwrap();
            for _ in 0..20_000 {
                let input = if r.next().is_multiple_of(2) {
                    let text = object(&mut r);
                    mutate(&mut r, &text)
                } else {
                    // Well-formed events, as most input is.
                    format!(
                        r#"{{"ts":{},"type":"{}","post_id":"p{}","user_id":{},"dwell_ms":{},"ok":{}}}"#,
                        1_700_000_000_000u64 + r.next() % 1000,
                        r.pick(&["like", "view", "caf\u{e9}"]),
                        r.next() % 50,
                        r.next() % 90,
                        r.pick(&["12", "-3", "null", "0"]),
                        r.pick(&["true", "false", "null"])
                    )
                    .into_bytes()
                };
                let mut a = ParseOutputBuilder::new();
                let mut b = ParseOutputBuilder::new();
                for (name, ty) in &p.columns {
                    a.events.add_column(name, *ty);
                    b.events.add_column(name, *ty);
                }
                let ra = p.parse_object(0, &input, &mut a);
                let rb = p.parse_object_serde(0, &input, &mut b);
                assert_eq!(ra, rb, "input: {}", String::from_utf8_lossy(&input));
                assert_eq!(
                    a.finish(),
                    b.finish(),
                    "input: {}",
                    String::from_utf8_lossy(&input)
                );
                let mut c = EventBatchBuilder::new();
                for (name, ty) in &p.columns {
                    c.add_column(name, *ty);
                }
                if parse_flat(&p, 0, &input, &mut c).is_some() {
                    fast_hits += 1;
                }
            }
        }
        assert!(
            fast_hits > 15_000,
            "the generator must exercise the fast path ({fast_hits})"
        );
    }
}
