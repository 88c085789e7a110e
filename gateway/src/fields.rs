//! Header fields as the gateway reads them: a client's request's, and a replica's answer's. An
//! HTTP/1.1 head keeps them where its parser found them: spans into the head's bytes, names
//! lowercased in place. No map is built and nothing is copied: a `HeaderMap` cost about 3k
//! instructions and two allocations per request and leg to build, search and drop, for the five
//! or six lookups the request path makes (linear scans over a dozen fields here). An h2 request
//! comes with hyper's map.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Where one field lies in the head: name and value as (start, length).
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

/// The fields of a head, read through names in lowercase.
///
/// A pointer wide, with what it reads in a box: a head's fields travel from the parser
/// through every stage to the writer, and inline (176 bytes) they were copied about fifteen
/// times per request and leg, more bytes moved than the box's allocation costs.
#[derive(Default)]
pub enum Fields {
    /// HTTP/1.1: the head's bytes and each field's span (names already lowercase).
    Spans(Box<Spanned>),
    /// h2: hyper's map.
    Map(Box<HeaderMap>),
    /// No fields (nothing to allocate).
    #[default]
    Empty,
}

/// An HTTP/1.1 head's bytes and where its fields lie in them.
pub struct Spanned {
    head: Bytes,
    spans: smallvec::SmallVec<[Span; 8]>,
}

impl From<HeaderMap> for Fields {
    fn from(map: HeaderMap) -> Self {
        Self::Map(Box::new(map))
    }
}

impl Span {
    /// The span of a field whose name and value are pieces of `buf` (as httparse gives them).
    pub fn within(buf: &[u8], name: &[u8], value: &[u8]) -> Self {
        Self {
            name: place(buf, name),
            value: place(buf, value),
        }
    }

    pub fn name_in<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[range(self.name)]
    }

    pub fn value_in<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[range(self.value)]
    }
}

/// Where `piece`, a part of `buf`, lies in it: (start, length). Heads are far shorter than 4 GiB.
pub fn place(buf: &[u8], piece: &[u8]) -> (u32, u32) {
    (
        (piece.as_ptr() as usize - buf.as_ptr() as usize) as u32,
        piece.len() as u32,
    )
}

/// The bytes a (start, length) pair covers.
pub fn range((start, len): (u32, u32)) -> std::ops::Range<usize> {
    start as usize..start as usize + len as usize
}

/// Lowercases the spans' names where they lie, before the head is frozen: fields are then
/// looked up by lowercase name (names are case-insensitive; values are left as sent).
pub fn lowercase_names(head: &mut [u8], spans: &[Span]) {
    for s in spans {
        head[range(s.name)].make_ascii_lowercase();
    }
}

/// The values of the fields of one name: [`Fields::get_all`].
pub struct Values<'a> {
    name: &'a [u8],
    from: Source<'a>,
}

enum Source<'a> {
    Spans(&'a [u8], std::slice::Iter<'a, Span>),
    Map(http::header::ValueIter<'a, HeaderValue>),
    Empty,
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match &mut self.from {
            Source::Spans(head, spans) => spans
                .find(|s| s.name_in(head) == self.name)
                .map(|s| s.value_in(head)),
            Source::Map(values) => values.next().map(HeaderValue::as_bytes),
            Source::Empty => None,
        }
    }
}

/// The span of the first field called `name`.
fn first<'a>(head: &[u8], spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name_in(head) == name.as_bytes())
}

impl Fields {
    /// The fields of an HTTP/1.1 head: `head`'s bytes, and where each field lies in them
    /// (names already lowercase).
    pub fn spans(head: Bytes, spans: smallvec::SmallVec<[Span; 8]>) -> Self {
        Self::Spans(Box::new(Spanned { head, spans }))
    }

    /// How many fields the request has.
    pub fn len(&self) -> usize {
        match self {
            Self::Spans(s) => s.spans.len(),
            Self::Map(m) => m.len(),
            Self::Empty => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each field's name (lowercase) and value, in the order sent, as an iterator: for tests
    /// (the request path calls `each`, `get` and `get_all`, which do not chain iterators).
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let (spans, map) = match self {
            Self::Spans(s) => (Some((&s.head, s.spans.iter())), None),
            Self::Map(m) => (None, Some(m.iter())),
            Self::Empty => (None, None),
        };
        let spans = spans
            .into_iter()
            .flat_map(|(head, spans)| spans.map(|s| (s.name_in(head), s.value_in(head))));
        let map = map
            .into_iter()
            .flatten()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        spans.chain(map)
    }

    /// Each field's name (lowercase) and value, in the order sent, and the whole line
    /// (`name: value\r\n`) where the head holds it in exactly the form a head writer writes:
    /// one copy of it instead of four. Called for each field, not iterated: the chained
    /// iterator over the fields cost about 50 instructions a field in the two writers. (Names stay
    /// bytes: they are only compared, and checking them as UTF-8 cost more than the lookups.)
    pub fn each(&self, mut field: impl FnMut(&[u8], &[u8], Option<&[u8]>)) {
        match self {
            Self::Spans(s) => {
                for span in &s.spans {
                    let name = range(span.name);
                    let value = range(span.value);
                    let whole = s.head.get(name.start..value.end + 2).filter(|line| {
                        let n = name.len();
                        value.start == name.end + 2
                            && line[n..n + 2] == *b": "
                            && line[line.len() - 2..] == *b"\r\n"
                    });
                    field(&s.head[name], &s.head[value], whole);
                }
            }
            Self::Map(m) => {
                for (n, v) in m.iter() {
                    field(n.as_str().as_bytes(), v.as_bytes(), None);
                }
            }
            Self::Empty => {}
        }
    }

    /// The values of the fields called `name` (lowercase), in order. A search of the spans
    /// (or the map's own lookup), not a filter over a chained iterator of all fields: for the
    /// `Connection` fields of every request that walk cost about 400 instructions.
    pub fn get_all<'a>(&'a self, name: &'a str) -> Values<'a> {
        let from = match self {
            Self::Spans(s) => Source::Spans(&s.head, s.spans.iter()),
            Self::Map(m) => Source::Map(m.get_all(name).into_iter()),
            Self::Empty => Source::Empty,
        };
        Values {
            name: name.as_bytes(),
            from,
        }
    }

    /// The first value of the field called `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match self {
            Self::Spans(s) => first(&s.head, &s.spans, name).map(|f| f.value_in(&s.head)),
            Self::Map(m) => m.get(name).map(|v| v.as_bytes()),
            Self::Empty => None,
        }
    }

    /// Like `get`, as bytes that share the head's buffer (no copy on HTTP/1.1).
    pub fn get_shared(&self, name: &str) -> Option<Bytes> {
        match self {
            Self::Spans(s) => first(&s.head, &s.spans, name).map(|f| s.head.slice(range(f.value))),
            Self::Map(m) => m.get(name).map(|v| Bytes::copy_from_slice(v.as_bytes())),
            Self::Empty => None,
        }
    }

    /// The fields as a map: for an answer going out on h2, or one the gateway rewrites. (On
    /// HTTP/1.1 spans are written as they are.)
    pub fn into_map(self) -> HeaderMap {
        match self {
            Self::Map(m) => *m,
            Self::Empty => HeaderMap::new(),
            Self::Spans(spanned) => {
                let Spanned { head, spans } = *spanned;
                let mut m = HeaderMap::with_capacity(spans.len());
                for s in &spans {
                    // The parser has checked both; a field that still does not fit is left out.
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(s.name_in(&head)),
                        HeaderValue::from_maybe_shared(head.slice(range(s.value))),
                    ) {
                        m.append(n, v);
                    }
                }
                m
            }
        }
    }

    /// The header section's size as the client sent it (name, value, ": " and CRLF per line).
    pub fn wire_size(&self) -> usize {
        match self {
            Self::Spans(s) => s
                .spans
                .iter()
                .map(|s| s.name.1 as usize + s.value.1 as usize + 4)
                .sum(),
            Self::Map(m) => m.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum(),
            Self::Empty => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(head: &'static [u8], fields: &[(&str, &str)]) -> Fields {
        // Spans of `fields` found in `head` (test heads hold each name and value once).
        let find = |s: &str| {
            let at = memchr::memmem::find(head, s.as_bytes()).unwrap() as u32;
            (at, s.len() as u32)
        };
        Fields::spans(
            Bytes::from_static(head),
            fields
                .iter()
                .map(|(n, v)| Span {
                    name: find(n),
                    value: find(v),
                })
                .collect(),
        )
    }

    #[test]
    fn spans_and_maps_read_alike() {
        let head = b"POST / HTTP/1.1\r\nhost: gw\r\nx-forwarded-for: 10.0.0.1\r\nx-multi: 1\r\nx-forwarded-for: 10.0.0.2\r\n\r\n";
        let raw = spans(
            head,
            &[
                ("host", "gw"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-multi", "1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
        );
        let mut m = HeaderMap::new();
        m.insert("host", HeaderValue::from_static("gw"));
        m.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        m.insert("x-multi", HeaderValue::from_static("1"));
        m.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let map = Fields::from(m);
        for f in [&raw, &map] {
            assert_eq!(f.len(), 4);
            assert!(!f.is_empty());
            assert_eq!(f.get("host"), Some(&b"gw"[..]));
            assert_eq!(f.get("x-forwarded-for"), Some(&b"10.0.0.1"[..]));
            assert_eq!(f.get("absent"), None);
            assert_eq!(f.get_shared("x-multi").as_deref(), Some(&b"1"[..]));
            let all: Vec<&[u8]> = f.get_all("x-forwarded-for").collect();
            assert_eq!(all, [&b"10.0.0.1"[..], &b"10.0.0.2"[..]]);
            assert_eq!(
                f.wire_size(),
                "host: gw\r\n".len()
                    + 2 * "x-forwarded-for: 10.0.0.1\r\n".len()
                    + "x-multi: 1\r\n".len()
            );
        }
        assert!(Fields::default().is_empty());
        assert_eq!(Fields::default().iter().count(), 0);
        assert!(Fields::default().into_map().is_empty());
        // A pointer and its variant: the fields move through every stage of a request.
        assert!(std::mem::size_of::<Fields>() <= 16);
    }

    /// What a head writer makes of the fields: whole lines where `each` offers them, the
    /// pieces otherwise.
    fn written(f: &Fields) -> (Vec<u8>, usize) {
        let (mut out, mut whole_lines) = (Vec::new(), 0);
        f.each(|name, value, whole| match whole {
            Some(line) => {
                whole_lines += 1;
                out.extend_from_slice(line);
            }
            None => out.extend_from_slice(&[name, b": ", value, b"\r\n"].concat()),
        });
        (out, whole_lines)
    }

    #[test]
    fn whole_lines_are_offered_only_as_a_writer_writes_them() {
        let head = b"GET / HTTP/1.1\r\na: v1\r\nb:v2\r\nc:  v3\r\nd: v4 \r\ne: v5\nf: v6\r\nh:\tv7\r\ng: \r\n\r\n";
        let fields = [
            ("a", "v1"),
            ("b", "v2"),
            ("c", "v3"),
            ("d", "v4"),
            ("e", "v5"),
            ("f", "v6"),
            ("h", "v7"),
            ("g", ""),
        ];
        let mut raw = spans(head, &fields[..7]);
        if let Fields::Spans(s) = &mut raw {
            // An empty value: httparse's slice starts where the line ends.
            let at = memchr::memmem::find(head, b"g: ").unwrap() as u32;
            s.spans.push(Span {
                name: (at, 1),
                value: (at + 3, 0),
            });
        }
        let (out, whole_lines) = written(&raw);
        assert_eq!(
            out,
            b"a: v1\r\nb: v2\r\nc: v3\r\nd: v4\r\ne: v5\r\nf: v6\r\nh: v7\r\ng: \r\n"
        );
        // `a`, `f` and `g` lie as written; `b`, `c`, `h` (spacing), `d` (trailing space) and
        // `e` (a bare LF) do not.
        assert_eq!(whole_lines, 3);
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.insert(n, HeaderValue::from_static(v));
        }
        assert_eq!(written(&Fields::from(m)), (out, 0));
        assert_eq!(written(&Fields::default()), (Vec::new(), 0));
    }
}
