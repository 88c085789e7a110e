//! Incremental reading of a replica's response as it is forwarded: for streams, the SSE events
//! (an event may span reads, a read may hold many events) — the final `usage` and `[DONE]`;
//! for JSON answers, the `usage` object at the end. The bytes forwarded are never altered,
//! except for one case: a usage-only event the gateway itself asked for (the client did not
//! request `stream_options.include_usage`) is removed from the client's stream.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

/// Token counts a replica reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The parts of an answer or a stream event that carry token counts. A typed read: the rest of
/// the document is skipped, not built into a tree.
#[derive(serde::Deserialize)]
struct WithUsage {
    usage: Option<Counts>,
    /// Only counted: an empty list marks a usage-only stream event.
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(serde::Deserialize)]
struct Counts {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<Counts> for Usage {
    fn from(c: Counts) -> Self {
        Self {
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
        }
    }
}

/// `usage` of a JSON document, and whether its `choices` are an empty list.
fn read_usage(json: &[u8]) -> Option<(Usage, bool)> {
    let w: WithUsage = serde_json::from_slice(json).ok()?;
    Some((w.usage?.into(), w.choices.is_some_and(|c| c.is_empty())))
}

/// Reads SSE events as they pass.
#[derive(Default)]
pub struct SseMeter {
    /// Bytes of the event still incomplete.
    partial: BytesMut,
    strip_usage: bool,
    pub usage: Option<Usage>,
    pub done: bool,
    /// Events that carried generated text (a content delta, or completion text).
    pub content_events: u64,
}

impl SseMeter {
    /// `strip_usage`: remove usage-only events from what is forwarded.
    pub fn new(strip_usage: bool) -> Self {
        Self {
            strip_usage,
            ..Self::default()
        }
    }

    /// Whether it may take bytes out of what it forwards.
    pub fn strips(&self) -> bool {
        self.strip_usage
    }

    /// Feeds one chunk; returns what to forward. Without stripping that is the chunk itself,
    /// at once. With stripping, complete events only (a partial event waits for its end).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let mut kept = if self.strip_usage {
            Some(BytesMut::with_capacity(self.partial.len() + chunk.len()))
        } else {
            None
        };
        if self.partial.is_empty() {
            // The usual case: the chunk starts at an event boundary. Read its whole events
            // where they are, and keep only an unfinished tail.
            let mut at = 0;
            while let Some((end, one_line)) = event_end(&chunk[at..]) {
                let event = &chunk[at..at + end];
                let usage_only = self.inspect(event, one_line);
                if let Some(k) = kept.as_mut() {
                    if !usage_only {
                        k.extend_from_slice(event);
                    }
                }
                at += end;
            }
            self.partial.extend_from_slice(&chunk[at..]);
        } else {
            self.partial.extend_from_slice(&chunk);
            while let Some((end, one_line)) = event_end(&self.partial) {
                let event = self.partial.split_to(end);
                let usage_only = self.inspect(&event, one_line);
                if let Some(k) = kept.as_mut() {
                    if !usage_only {
                        k.extend_from_slice(&event);
                    }
                }
            }
        }
        match kept {
            Some(k) => k.freeze(),
            None => chunk,
        }
    }

    /// What is left when the stream ends: an unterminated last event, forwarded as it is.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.partial.split().freeze();
        if !rest.is_empty() {
            self.inspect(&rest, false);
        }
        if self.strip_usage {
            rest
        } else {
            Bytes::new()
        }
    }

    /// Reads one event; returns whether it is a usage-only event (no choices). `one_line`:
    /// `event_end` found it to be a single line and its blank line (the line search is not
    /// repeated for its data).
    fn inspect(&mut self, event: &[u8], one_line: bool) -> bool {
        let data = event_data(event, one_line);
        if &*data == b"[DONE]" {
            self.done = true;
            return false;
        }
        if has_content(&data) {
            self.content_events += 1;
        }
        if !has_usage_object(&data) {
            return false;
        }
        let Some((usage, usage_only)) = read_usage(&data) else {
            return false;
        };
        self.usage = Some(usage);
        usage_only
    }
}

/// Whether an event's data carries generated text: a non-empty `"content"` (chat) or
/// `"text"` (completions) string. A byte test, not a JSON parse: it runs on every event.
fn has_content(data: &[u8]) -> bool {
    let keys = [
        (finder(&CONTENT_KEY, b"\"content\":"), 10),
        (finder(&TEXT_KEY, b"\"text\":"), 7),
    ];
    for (key, len) in keys {
        // `find` in a loop: an iterator is built (and copied) per event otherwise.
        let mut from = 0;
        while let Some(at) = key.find(&data[from..]) {
            let rest = &data[from + at + len..];
            let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
            if rest.first() == Some(&b'"') && rest.get(1).is_some_and(|b| *b != b'"') {
                return true;
            }
            from += at + 1;
        }
    }
    false
}

/// Whether an event's data has a `"usage"` key with an object value, the only kind read.
/// OpenAI's own stream, once usage is asked for (as the gateway does for token budgets), has
/// `"usage":null` in every content event: those are not parsed. A `"usage"` that is a value
/// (`"object":"usage"`) is passed over: the key may still follow.
fn has_usage_object(data: &[u8]) -> bool {
    let key = finder(&USAGE_KEY, b"\"usage\"");
    let mut from = 0;
    while let Some(at) = key.find(&data[from..]) {
        from += at + 7;
        if value_after_key(&data[from..]).is_some_and(|v| v.starts_with(b"{")) {
            return true;
        }
    }
    false
}

/// What follows a key (`after` starts just past its closing quote): the value after the colon,
/// from its first byte; `None` if no colon follows (the quoted text was a value).
fn value_after_key(after: &[u8]) -> Option<&[u8]> {
    after
        .trim_ascii_start()
        .strip_prefix(b":")
        .map(<[u8]>::trim_ascii_start)
}

/// End (exclusive) of the first complete event: after a blank line (`\n\n` or `\r\n\r\n`);
/// and whether the event is one line ending `\n\n` (the first line end found ends it).
fn event_end(buf: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\n', &buf[i..]) {
        let nl = i + off;
        let next = nl + 1;
        // A blank line follows this line end?
        match buf.get(next) {
            Some(b'\n') => return Some((next + 1, i == 0)),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some((next + 2, false)),
            _ => {}
        }
        i = next;
    }
    None
}

/// The data of a one-line event `data: ...\n\n`, taken as it is: one search for a line end
/// inside, unless `known_one_line` (`event_end` found its first line end to end it).
fn one_line_data(event: &[u8], known_one_line: bool) -> Option<&[u8]> {
    let one = event.strip_prefix(b"data: ")?.strip_suffix(b"\n\n")?;
    let one_line = known_one_line || memchr::memchr(b'\n', one).is_none();
    (one_line && one.last() != Some(&b'\r')).then_some(one)
}

/// Searchers built once (building one costs more than a search through an event).
static USAGE_KEY: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();
static CONTENT_KEY: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();
static TEXT_KEY: OnceLock<memchr::memmem::Finder<'static>> = OnceLock::new();

fn finder(
    cell: &'static OnceLock<memchr::memmem::Finder<'static>>,
    needle: &'static [u8],
) -> &'static memchr::memmem::Finder<'static> {
    cell.get_or_init(|| memchr::memmem::Finder::new(needle))
}

/// The data of an event: its `data:` lines joined by `\n`, comments and other fields skipped —
/// borrowed when there is one line (every event an OpenAI-compatible server sends), so reading
/// it copies nothing. `known_one_line`: see `one_line_data`.
fn event_data(event: &[u8], known_one_line: bool) -> Cow<'_, [u8]> {
    // That one shape, `data: ...` and a blank line, is taken as it is instead of splitting
    // the event into lines.
    one_line_data(event, known_one_line).map_or_else(|| event_data_lines(event), Cow::Borrowed)
}

/// `event_data` for any event: line by line.
fn event_data_lines(event: &[u8]) -> Cow<'_, [u8]> {
    let mut lines = lines(event)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| l.strip_prefix(b"data:"))
        .map(|rest| rest.strip_prefix(b" ").unwrap_or(rest));
    let Some(first) = lines.next() else {
        return Cow::Borrowed(&[]);
    };
    let Some(second) = lines.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        out.push(b'\n');
        out.extend_from_slice(line);
    }
    Cow::Owned(out)
}

/// The pieces of `buf` between `\n`s, as `split` gives them, found with the SIMD search: a
/// byte-at-a-time split was most of the metering's cost per event (about 1,000 instructions
/// for a 200-byte event).
fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut ends = memchr::memchr_iter(b'\n', buf);
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let from = start?;
        let end = ends.next();
        start = end.map(|e| e + 1);
        Some(&buf[from..end.unwrap_or(buf.len())])
    })
}

/// `usage` of a complete JSON answer (this runs on every non-streaming answer).
pub fn json_usage(body: &[u8]) -> Option<Usage> {
    // Answers end with their `usage`: read just that object when it is found. The byte
    // sequence `"usage"` cannot occur inside a JSON string (its quotes would be escaped), so
    // followed by `:` it is a key. Anything unexpected falls back to reading the document.
    // The last one is the answer's own. It is searched for from the end, where it usually is,
    // by its `g`: no `usage` object has one, so the first `g` found is usually the key's
    // (`memmem`'s reverse search is not vectorised and cost twice as much).
    let last_key = memchr::memrchr_iter(b'g', body)
        .filter_map(|g| g.checked_sub(4))
        .find(|&at| body[at..].starts_with(b"\"usage\""));
    if let Some(value) = last_key.and_then(|at| value_after_key(&body[at + 7..])) {
        if let Some(u) = flat_counts(value) {
            return Some(u);
        }
        let mut de = serde_json::Deserializer::from_slice(value);
        if let Ok(u) = <Counts as serde::Deserialize>::deserialize(&mut de) {
            return Some(u.into());
        }
    }
    read_usage(body).map(|(u, _)| u)
}

/// The counts of a flat `usage` object (`{"prompt_tokens":20,"completion_tokens":16,..}`), read
/// by hand: serde spent about 1,400 instructions on those 60 bytes. Other keys may hold
/// numbers, `null`, `true`, `false` or strings without escapes. Anything else (a nested
/// object, an escape, a repeated count, a number that is not a `u64`) gives `None`, and the
/// caller reads the object with serde as before, so the two can never disagree.
fn flat_counts(value: &[u8]) -> Option<Usage> {
    let mut at = 0;
    let ws = |at: &mut usize| {
        while value
            .get(*at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            *at += 1;
        }
    };
    let eat = |at: &mut usize, b: u8| {
        ws(at);
        let hit = value.get(*at) == Some(&b);
        *at += usize::from(hit);
        hit
    };
    // An unescaped string's contents; `at` is just past its opening quote. (One with an
    // escape, a control character or bad UTF-8 is left to serde.)
    let string = |at: &mut usize| -> Option<&[u8]> {
        let (end, high) = crate::json::quote_or_escape(value, *at).ok()?;
        let s = &value[*at..end];
        if value[end] != b'"' || high && std::str::from_utf8(s).is_err() {
            return None;
        }
        *at = end + 1;
        Some(s)
    };
    let (mut prompt, mut completion) = (None, None);
    if !eat(&mut at, b'{') {
        return None;
    }
    if eat(&mut at, b'}') {
        return Some(Usage::default());
    }
    loop {
        if !eat(&mut at, b'"') {
            return None;
        }
        // The keys every server writes are known where they lie, closing quote and all: no
        // search for the quote and no UTF-8 check (about 100 instructions a key).
        let rest = &value[at..];
        let count = if rest.starts_with(b"prompt_tokens\"") {
            at += "prompt_tokens\"".len();
            Some(&mut prompt)
        } else if rest.starts_with(b"completion_tokens\"") {
            at += "completion_tokens\"".len();
            Some(&mut completion)
        } else if rest.starts_with(b"total_tokens\"") {
            at += "total_tokens\"".len();
            None
        } else {
            // Any other key. (Not a count: a count's key without escapes is caught above, and
            // one with escapes is left to serde.)
            string(&mut at)?;
            None
        };
        if !eat(&mut at, b':') {
            return None;
        }
        ws(&mut at);
        let start = at;
        match value.get(at)? {
            b'"' if count.is_none() => {
                at += 1;
                string(&mut at)?;
            }
            b'-' | b'0'..=b'9' | b'n' | b't' | b'f' => {
                while value
                    .get(at)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    at += 1;
                }
                let token = &value[start..at];
                match count {
                    Some(slot) => {
                        let digits_only = !token.is_empty()
                            && token.iter().all(u8::is_ascii_digit)
                            && (token[0] != b'0' || token.len() == 1);
                        if slot.is_some() || !digits_only {
                            return None;
                        }
                        *slot = Some(token.iter().try_fold(0u64, |n, &d| {
                            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                        })?);
                    }
                    None if matches!(token, b"null" | b"true" | b"false") => {}
                    None if is_json_number(token) => {}
                    None => return None,
                }
            }
            _ => return None,
        }
        if eat(&mut at, b'}') {
            return Some(Usage {
                prompt_tokens: prompt.unwrap_or(0),
                completion_tokens: completion.unwrap_or(0),
            });
        }
        if !eat(&mut at, b',') {
            return None;
        }
    }
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    fn digits(t: &[u8]) -> (usize, &[u8]) {
        let n = t.iter().take_while(|b| b.is_ascii_digit()).count();
        (n, &t[n..])
    }
    let t = t.strip_prefix(b"-").unwrap_or(t);
    let (n, mut rest) = digits(t);
    if n == 0 || (n > 1 && t[0] == b'0') {
        return false;
    }
    if let Some(r) = rest.strip_prefix(b".") {
        let (n, r) = digits(r);
        if n == 0 {
            return false;
        }
        rest = r;
    }
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let r = r
            .strip_prefix(b"+")
            .or_else(|| r.strip_prefix(b"-"))
            .unwrap_or(r);
        let (n, r) = digits(r);
        if n == 0 {
            return false;
        }
        rest = r;
    }
    rest.is_empty()
}

/// Adds `"stream_options":{"include_usage":true}` to a JSON object body (which must not have
/// `stream_options` already). Only the opening brace is touched; the rest is forwarded as is.
pub fn inject_include_usage(body: &[u8]) -> Option<Bytes> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let after = &body[open + 1..];
    let empty = after.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let field: &[u8] = if empty {
        br#""stream_options":{"include_usage":true}"#
    } else {
        br#""stream_options":{"include_usage":true},"#
    };
    let mut out = BytesMut::with_capacity(body.len() + field.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field);
    out.extend_from_slice(after);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = concat!(
        ": ping\n\n",
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, SseMeter) {
        let mut m = SseMeter::new(strip);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&m.feed(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&m.finish());
        (out, m)
    }

    #[test]
    fn finds_usage_and_done_and_forwards_unchanged() {
        let (out, m) = run(&[STREAM.as_bytes()], false);
        assert_eq!(out, STREAM.as_bytes());
        assert_eq!(
            m.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2
            })
        );
        assert!(m.done);
    }

    #[test]
    fn strips_only_the_usage_only_event() {
        let (out, m) = run(&[STREAM.as_bytes()], true);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("usage"));
        assert_eq!(text, STREAM.replace(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n", ""));
        assert_eq!(m.usage.unwrap().total(), 9);
    }

    #[test]
    fn a_cut_stream_has_no_done_and_keeps_its_tail() {
        let cut = &STREAM.as_bytes()[..120];
        let (out, m) = run(&[cut], true);
        assert_eq!(out, cut);
        assert!(!m.done && m.usage.is_none());
    }

    #[test]
    fn injection_touches_only_the_opening_brace() {
        let b = br#" {"model":"m","stream":true}"#;
        let out = inject_include_usage(b).unwrap();
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(
            &inject_include_usage(b"{ }").unwrap()[..],
            br#"{"stream_options":{"include_usage":true} }"#
        );
        assert!(inject_include_usage(b"[1]").is_none());
    }

    #[test]
    fn event_data_joins_data_lines_and_borrows_a_single_one() {
        assert!(matches!(
            event_data(b"data: {\"a\":1}\n\n", false),
            Cow::Borrowed(b"{\"a\":1}")
        ));
        assert_eq!(
            &*event_data(b": comment\r\ndata: a\r\nevent: x\ndata:b\n\n", false),
            b"a\nb"
        );
        assert_eq!(&*event_data(b"event: ping\n\n", false), b"");
    }

    proptest! {
        /// The one-line shortcut reads events as reading them line by line does.
        #[test]
        fn event_data_shortcut_agrees(parts in proptest::collection::vec(proptest::sample::select(vec!["data: ", "data:", "x", "\r", "\n", ":", "event: y", " "]), 0..12)) {
            let event = parts.concat();
            prop_assert_eq!(event_data(event.as_bytes(), false), event_data_lines(event.as_bytes()));
            let framed = format!("data: {event}\n\n");
            prop_assert_eq!(event_data(framed.as_bytes(), false), event_data_lines(framed.as_bytes()));
            // And so does the shortcut `event_end` allows, for the event it finds first.
            for text in [event.as_bytes(), framed.as_bytes()] {
                if let Some((end, one_line)) = event_end(text) {
                    if let Some(one) = one_line_data(&text[..end], one_line) {
                        prop_assert_eq!(one, &*event_data_lines(&text[..end]));
                    }
                }
            }
        }

        /// The SIMD line split gives what `split` gives.
        #[test]
        fn lines_split_like_split(buf in proptest::collection::vec(proptest::sample::select(vec![b'\n', b'\r', b'a', b'd']), 0..40)) {
            let ours: Vec<&[u8]> = lines(&buf).collect();
            let std: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
            prop_assert_eq!(ours, std);
        }
    }

    #[test]
    fn only_usage_objects_are_parsed() {
        assert!(has_usage_object(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(has_usage_object(br#"{"object":"usage","usage" : {"a":1}}"#));
        assert!(!has_usage_object(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#
        ));
        assert!(!has_usage_object(br#"{"object":"usage"}"#));
        assert!(!has_usage_object(br#"{"choices":[]}"#));
        // OpenAI's content events with usage asked for: counted, and no usage read from them.
        let mut m = SseMeter::new(false);
        m.feed(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        ));
        assert_eq!((m.content_events, m.usage), (1, None));
    }

    #[test]
    fn json_usage_is_read() {
        let u = json_usage(br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4}}"#);
        assert_eq!(u.unwrap().total(), 7);
        assert!(json_usage(b"{}").is_none());
        assert!(json_usage(br#"{"usage":null}"#).is_none());
        // Text that quotes a usage object is not mistaken for the answer's own.
        let tricky = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[{"text":"\"usage\":{\"prompt_tokens\":90}"}]}"#;
        assert_eq!(json_usage(tricky).unwrap().total(), 3);
        // A value "usage" is not a key; the document is read instead.
        let value = br#"{"object":"usage","usage":{"prompt_tokens":5,"completion_tokens":0}}"#;
        assert_eq!(json_usage(value).unwrap().total(), 5);
        // A nested object's own `usage` key comes first; the answer's (the last) counts.
        let nested = br#"{"choices":[{"usage":{"prompt_tokens":1,"completion_tokens":1}}],"usage":{"prompt_tokens":5,"completion_tokens":6}}"#;
        assert_eq!(json_usage(nested).unwrap().total(), 11);
        // Text after the key, `g`s and a key-like word included, is searched through.
        let after = br#"{"usage":{"prompt_tokens":2,"completion_tokens":3},"tag":"g usage gg"}"#;
        assert_eq!(json_usage(after).unwrap().total(), 5);
    }

    /// What serde makes of a `usage` value (the path `flat_counts` stands in for).
    fn serde_counts(value: &[u8]) -> Option<Usage> {
        let mut de = serde_json::Deserializer::from_slice(value);
        <Counts as serde::Deserialize>::deserialize(&mut de)
            .ok()
            .map(Usage::from)
    }

    #[test]
    fn flat_usage_objects_are_read_by_hand_and_the_rest_left_to_serde() {
        let u = |p, c| {
            Some(Usage {
                prompt_tokens: p,
                completion_tokens: c,
            })
        };
        // vLLM's, SGLang's and llama.cpp's shapes.
        for (text, want) in [
            (&br#"{"completion_tokens":16,"prompt_tokens":20,"total_tokens":36}"#[..], u(20, 16)),
            (br#"{"prompt_tokens":7,"total_tokens":9,"completion_tokens":2,"prompt_tokens_details":null}"#, u(7, 2)),
            (br#" { "prompt_tokens" : 3 , "reasoning" : "n/a", "x": -1.5e+3, "y": true } , "more""#, u(3, 0)),
            (b"{}", u(0, 0)),
        ] {
            assert_eq!(flat_counts(text), want, "{}", String::from_utf8_lossy(text));
            assert_eq!(serde_counts(text), want);
        }
        // Left to serde: nested values, escapes, repeated or non-integer counts, bad grammar.
        for text in [
            &br#"{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}"#[..],
            br#"{"prompt_tokens":1,"note":"a\"b"}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            br#"{"prompt_tokens":1.0}"#,
            br#"{"prompt_tokens":-0}"#,
            br#"{"prompt_tokens":012}"#,
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt_tokens":null}"#,
            br#"{"prompt_tokens":"3"}"#,
            br#"{"x":1.}"#,
            br#"{"x":01}"#,
            br#"{"x":nul}"#,
            br#"{"x":1,}"#,
            b"{\"x\":1\x0c}",
            b"{\"\xff\":1}",
            br#"{"prompt_tokens":1"#,
            b"null",
        ] {
            assert_eq!(flat_counts(text), None, "{}", String::from_utf8_lossy(text));
        }
    }

    proptest! {
        /// Whenever the hand reader answers, serde agrees.
        #[test]
        fn flat_counts_agrees_with_serde(
            parts in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("prompt_tokens"), Just("completion_tokens"), Just("total_tokens"),
                        Just("x"), Just(""),
                    ],
                    prop_oneof![
                        Just("0"), Just("7"), Just("007"), Just("-3"), Just("1.5"), Just("2e3"),
                        Just("1e"), Just("-"), Just("18446744073709551615"),
                        Just("18446744073709551616"), Just("null"), Just("true"), Just("nulls"),
                        Just("\"s\""), Just("\"a\\\"b\""), Just("{}"), Just("[1]"),
                    ],
                    prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\u{c}")],
                ),
                0..6,
            ),
            tail in prop_oneof![Just("}"), Just(",}"), Just(""), Just("} trailing")],
        ) {
            let mut text = String::from("{");
            for (i, (key, value, ws)) in parts.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!("{ws}\"{key}\"{ws}:{ws}{value}{ws}"));
            }
            text.push_str(tail);
            if let Some(fast) = flat_counts(text.as_bytes()) {
                prop_assert_eq!(Some(fast), serde_counts(text.as_bytes()), "{}", text);
            }
        }
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12), strip: bool) {
            let bytes = STREAM.as_bytes();
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.dedup();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                chunks.push(&bytes[at..c]);
                at = c;
            }
            chunks.push(&bytes[at..]);
            let (whole, m1) = run(&[bytes], strip);
            let (split, m2) = run(&chunks, strip);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(m1.usage, m2.usage);
            prop_assert_eq!(m1.done, m2.done);
            prop_assert_eq!(m1.content_events, m2.content_events);
        }
    }
}
