//! Where log lines go: into a buffer the event loop never waits on, written to stdout by a
//! thread of its own, a batch at a time.
//!
//! Written straight to stdout, every access-log line was a `write` on the request's thread,
//! and a log pipe that stopped draining (a stuck log shipper, a full container log buffer)
//! stopped the whole data plane at the next line. Now a line is copied into the buffer and the
//! writer thread writes what has gathered:
//! * at most [`FLUSH_EVERY`] after the first line of a batch (nginx's `access_log … flush=`),
//!   or at once when [`FLUSH_AT`] bytes have gathered, or for a warning or an error;
//! * lines arriving while the buffer holds [`CAP`] bytes (the pipe is not draining) are
//!   dropped and counted (`gateway_log_lines_dropped_total`), never waited for;
//! * [`flush`] writes what is left (at exit).
//!
//! Each line reaches the buffer whole (the formatter hands over one line per write), so lines
//! are never split or interleaved.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits for its batch to be written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A batch this large is written at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// The most the buffer holds while the output is not taking it; later lines are dropped.
pub const CAP: usize = 4 * 1024 * 1024;

struct Pending {
    buf: Vec<u8>,
    /// A warning or an error is waiting: write without waiting for the batch.
    urgent: bool,
}

/// The buffer, shared by the threads that log and the one that writes.
pub struct Logs<W: Write + Send + 'static = io::Stdout> {
    pending: Mutex<Pending>,
    wake: Condvar,
    cap: usize,
    /// No writer thread (it could not be started): each line is written by whoever logs it.
    direct: bool,
    /// Lines dropped because the output was not taking them.
    dropped: AtomicU64,
    /// The output; held while a batch is written, so batches go out in order.
    out: Mutex<W>,
}

impl<W: Write + Send + 'static> Logs<W> {
    fn new(out: W, cap: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                urgent: false,
            }),
            wake: Condvar::new(),
            cap,
            direct: false,
            dropped: AtomicU64::new(0),
            out: Mutex::new(out),
        }
    }

    /// Adds one line; never waits for the output (unless there is no writer thread).
    fn push(&self, line: &[u8], urgent: bool) {
        if self.direct {
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = out.write_all(line);
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.buf.len() + line.len() > self.cap {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The writer sleeps until a batch starts, and is woken early only for a full batch
        // or a warning: under load most lines wake nobody.
        let wake = p.buf.is_empty() || urgent || p.buf.len() + line.len() >= FLUSH_AT;
        p.buf.extend_from_slice(line);
        p.urgent |= urgent;
        drop(p);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Writes what has gathered (from the writer thread, or at exit).
    pub fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = {
            let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            p.urgent = false;
            std::mem::take(&mut p.buf)
        };
        if !batch.is_empty() {
            // Nothing to tell anyone if the output is gone: the lines are lost either way.
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }

    /// The writer thread's loop: sleeps while there is nothing, gives a batch up to
    /// `FLUSH_EVERY` to gather, writes it.
    fn run(&self) {
        loop {
            {
                let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                while p.buf.is_empty() {
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                if !p.urgent && p.buf.len() < FLUSH_AT {
                    let _ = self
                        .wake
                        .wait_timeout_while(p, FLUSH_EVERY, |p| !p.urgent && p.buf.len() < FLUSH_AT)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            self.flush();
        }
    }

    /// Starts the writer thread.
    fn start(self: &Arc<Self>) -> io::Result<()> {
        let logs = self.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || logs.run())
            .map(|_| ())
    }
}

/// What the formatter writes one line through.
pub struct Line<'a, W: Write + Send + 'static> {
    logs: &'a Logs<W>,
    urgent: bool,
}

impl<W: Write + Send + 'static> Write for Line<'_, W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.logs.push(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The formatter's writer: a handle on the shared buffer.
#[derive(Clone)]
pub struct Writer<W: Write + Send + 'static = io::Stdout>(Arc<Logs<W>>);

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for Writer<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            logs: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        Line {
            logs: &self.0,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

static STDOUT: OnceLock<Arc<Logs>> = OnceLock::new();

/// The writer for stdout, its thread started on first use. If the thread cannot be started,
/// lines are written by whoever logs, as before.
pub fn stdout() -> Writer {
    let logs = STDOUT.get_or_init(|| {
        let logs = Arc::new(Logs::new(io::stdout(), CAP));
        if logs.start().is_err() {
            let mut direct = Logs::new(io::stdout(), CAP);
            direct.direct = true;
            return Arc::new(direct);
        }
        logs
    });
    Writer(logs.clone())
}

/// Lines dropped since start because stdout was not taking them (for the metric).
pub fn dropped() -> u64 {
    STDOUT
        .get()
        .map_or(0, |l| l.dropped.load(Ordering::Relaxed))
}

/// Writes the lines still buffered for stdout (at exit).
pub fn flush() {
    if let Some(logs) = STDOUT.get() {
        logs.flush();
    }
}

/// Set once the JSON format writes to [`stdout`]: the access log's lines are then built here
/// by hand ([`JsonLine`]) rather than by the formatter.
static HAND_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Called by `main` when the logs are JSON lines through [`stdout`].
pub fn hand_write_json_lines() {
    HAND_WRITTEN.store(true, Ordering::Relaxed);
}

/// Whether [`JsonLine`]s are written (otherwise the caller emits a `tracing` event).
pub fn hand_written() -> bool {
    HAND_WRITTEN.load(Ordering::Relaxed)
}

/// One JSON log line, in the shape the formatter writes (`timestamp`, `level`, the fields,
/// `target`), built by hand: the formatter spent about 30,000 instructions on an access-log
/// line (a UTF-8 check of the whole line per field, a string per value), more than the rest
/// of the request.
pub struct JsonLine<'a> {
    out: &'a mut Vec<u8>,
}

/// A field's key as the line carries it (`,"name":`), made once by [`json_key!`]: one copy
/// per field instead of three.
#[derive(Clone, Copy)]
pub struct Key(pub &'static str);

/// The [`Key`] of a field named by a literal.
#[macro_export]
macro_rules! json_key {
    ($name:literal) => {
        $crate::logs::Key(concat!(",\"", $name, "\":"))
    };
}

impl JsonLine<'_> {
    pub fn str(&mut self, key: Key, value: &str) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        escape_into(self.out, value);
        self.out.push(b'"');
        self
    }

    pub fn u64(&mut self, key: Key, value: u64) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(crate::codec::decimal(value, &mut [0; 20]));
        self
    }

    pub fn bool(&mut self, key: Key, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// A duration in milliseconds, to the microsecond (`1.466`).
    pub fn ms(&mut self, key: Key, value: Duration) -> &mut Self {
        self.key(key);
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let mut buf = [0; 20];
        self.out
            .extend_from_slice(crate::codec::decimal(us / 1000, &mut buf));
        let frac = us % 1000;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
        self
    }

    /// A socket address as `Display` writes it (`127.0.0.1:8080`, `[::1]:8080`): an IPv4 one
    /// by hand (`Display` cost about 2,000 instructions), nothing in either needing escapes.
    pub fn addr(&mut self, key: Key, value: std::net::SocketAddr) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        match value {
            std::net::SocketAddr::V4(v4) => {
                let mut buf = [0; 20];
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out
                        .extend_from_slice(crate::codec::decimal(u64::from(octet), &mut buf));
                }
                self.out.push(b':');
                self.out
                    .extend_from_slice(crate::codec::decimal(u64::from(v4.port()), &mut buf));
            }
            v6 => {
                use std::io::Write as _;
                let _ = write!(self.out, "{v6}");
            }
        }
        self.out.push(b'"');
        self
    }

    fn key(&mut self, key: Key) {
        self.out.extend_from_slice(key.0.as_bytes());
    }
}

/// Writes an INFO line of `target` with the fields `fill` adds, to [`stdout`].
pub fn info_line(target: &str, fill: impl FnOnce(&mut JsonLine<'_>)) {
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    LINE.with(|line| {
        let Ok(mut out) = line.try_borrow_mut() else {
            return;
        };
        out.clear();
        out.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(std::time::SystemTime::now(), &mut out);
        out.extend_from_slice(b"\",\"level\":\"INFO\"");
        fill(&mut JsonLine { out: &mut out });
        out.extend_from_slice(b",\"target\":\"");
        escape_into(&mut out, target);
        out.extend_from_slice(b"\"}\n");
        if let Some(logs) = STDOUT.get() {
            logs.push(&out, false);
        }
    });
}

/// `s` as the inside of a JSON string: `"`, `\` and control characters escaped, the rest as
/// it is (it is UTF-8 already).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Almost every value needs no escape: a test of every byte without an early exit (which
    // the compiler vectorises), then one copy.
    if !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[from..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
                from = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        out.extend_from_slice(escaped);
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
}

/// `t` as RFC 3339 in UTC to the microsecond (`2026-11-30T19:13:45.036957Z`), as the
/// formatter writes its timestamps.
fn rfc3339_micros(t: std::time::SystemTime, out: &mut Vec<u8>) {
    let since = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's `civil_from_days`), for days since 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let two = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    two(out, year / 100 % 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem / 60 % 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    let us = u64::from(since.subsec_micros());
    two(out, us / 10_000);
    two(out, us / 100 % 100);
    two(out, us % 100);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// What was written, and whether the output is shut.
    type Written = Mutex<(Vec<u8>, bool)>;

    /// An output the test can read, and hold shut: writes wait while it is shut.
    #[derive(Clone, Default)]
    struct Out(Arc<(Written, Condvar)>);

    impl Out {
        fn shut(&self, shut: bool) {
            self.0 .0.lock().unwrap().1 = shut;
            self.0 .1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0 .0.lock().unwrap().0.clone()).unwrap()
        }
        /// Waits (up to 10 s) for `n` lines to have been written.
        fn wait_lines(&self, n: usize) -> String {
            let t = Instant::now();
            loop {
                let text = self.text();
                if text.lines().count() >= n || t.elapsed() > Duration::from_secs(10) {
                    return text;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, cv) = &*self.0;
            let mut g = cv.wait_while(m.lock().unwrap(), |g| g.1).unwrap();
            g.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn started(out: &Out, cap: usize) -> Writer<Out> {
        let logs = Arc::new(Logs::new(out.clone(), cap));
        logs.start().unwrap();
        Writer(logs)
    }

    fn log(w: &Writer<Out>, line: &str, urgent: bool) {
        let mut l = w.make_writer();
        l.urgent = urgent;
        l.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_are_written_whole_and_in_order_by_the_writer_thread() {
        let out = Out::default();
        let w = started(&out, CAP);
        let lines: Vec<String> = (0..2000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        // From several threads at once: each line arrives whole.
        std::thread::scope(|s| {
            for part in lines.chunks(500) {
                let w = w.clone();
                s.spawn(move || part.iter().for_each(|l| log(&w, l, false)));
            }
        });
        let text = out.wait_lines(2000);
        let mut got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), 2000);
        // Each thread's lines in its order; all of them, none split.
        let first = |l: &&str| l[5..l.len() - 1].parse::<usize>().unwrap() / 500;
        for t in 0..4 {
            let mine: Vec<usize> = got
                .iter()
                .filter(|l| first(l) == t)
                .map(|l| l[5..l.len() - 1].parse().unwrap())
                .collect();
            assert_eq!(mine, (t * 500..t * 500 + 500).collect::<Vec<_>>());
        }
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 2000);
        assert_eq!(w.0.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_stuck_output_never_blocks_a_logger_and_lines_past_the_cap_are_dropped() {
        let out = Out::default();
        out.shut(true);
        let w = started(&out, 1000);
        // The writer thread takes the first line and then waits on the shut output.
        log(&w, "first\n", true);
        let t = Instant::now();
        while !w.0.pending.lock().unwrap().buf.is_empty() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // 100 lines of 50 bytes: the first 20 fill the buffer, the other 80 are dropped.
        let line = format!("{}\n", "x".repeat(49));
        let t = Instant::now();
        for _ in 0..100 {
            log(&w, &line, false);
        }
        assert!(t.elapsed() < Duration::from_secs(5), "a logger waited");
        assert_eq!(w.0.dropped.load(Ordering::Relaxed), 80);
        // The output opens: what was kept is written, whole.
        out.shut(false);
        let text = out.wait_lines(21);
        assert_eq!(text.lines().count(), 21, "{text}");
        assert!(text.starts_with("first\n"));
        assert!(text.lines().skip(1).all(|l| l == &line[..49]));
    }

    #[test]
    fn flush_writes_what_is_left() {
        // No writer thread: only `flush` writes.
        let out = Out::default();
        let logs = Logs::new(out.clone(), CAP);
        logs.push(b"a\n", false);
        logs.push(b"b\n", true);
        assert_eq!(out.text(), "");
        logs.flush();
        assert_eq!(out.text(), "a\nb\n");
        logs.flush();
        assert_eq!(out.text(), "a\nb\n");
    }

    #[test]
    fn without_a_writer_thread_lines_are_written_by_the_logger() {
        let out = Out::default();
        let mut logs = Logs::new(out.clone(), CAP);
        logs.direct = true;
        logs.push(b"now\n", false);
        assert_eq!(out.text(), "now\n");
    }

    #[test]
    fn warnings_are_written_at_once_the_rest_batched() {
        // The formatter as `main` sets it up, over a buffer with no writer thread.
        let w = Writer(Arc::new(Logs::new(Out::default(), CAP)));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", status = "200", "one request");
            let p = w.0.pending.lock().unwrap();
            assert!(!p.urgent);
            assert_eq!(String::from_utf8_lossy(&p.buf).lines().count(), 1);
            drop(p);
            tracing::warn!("something is wrong");
            assert!(w.0.pending.lock().unwrap().urgent);
        });
    }

    fn line(fill: impl FnOnce(&mut JsonLine<'_>)) -> serde_json::Value {
        let mut out = Vec::new();
        fill(&mut JsonLine { out: &mut out });
        // The fields as the line carries them: each after a comma.
        let text = format!("{{\"x\":0{}}}", String::from_utf8(out).unwrap());
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn fields_are_written_as_json_reads_them() {
        let v = line(|l| {
            l.str(json_key!("s"), "plain")
                .str(
                    json_key!("q"),
                    "a \"quoted\" \\ back\nslash\t\u{1}\u{1f} é ✓",
                )
                .u64(json_key!("n"), 0)
                .u64(json_key!("max"), u64::MAX)
                .bool(json_key!("t"), true)
                .bool(json_key!("f"), false)
                .ms(json_key!("ms"), Duration::from_nanos(1_466_160))
                .ms(json_key!("small"), Duration::from_micros(20))
                .ms(json_key!("zero"), Duration::ZERO)
                .ms(
                    json_key!("long"),
                    Duration::from_secs(3723) + Duration::from_micros(5),
                );
            for (key, addr) in [
                (json_key!("v4"), "127.0.0.1:8080"),
                (json_key!("v4_edges"), "255.0.10.99:0"),
                (json_key!("v6"), "[::1]:443"),
                (json_key!("v6_scoped"), "[fe80::1%2]:65535"),
            ] {
                l.addr(key, addr.parse().unwrap());
            }
        });
        assert_eq!(v["s"], "plain");
        assert_eq!(v["q"], "a \"quoted\" \\ back\nslash\t\u{1}\u{1f} é ✓");
        assert_eq!(v["n"], 0);
        assert_eq!(v["max"], u64::MAX);
        assert_eq!(
            (v["t"].clone(), v["f"].clone()),
            (true.into(), false.into())
        );
        assert_eq!(v["ms"].as_f64(), Some(1.466));
        assert_eq!(v["small"].as_f64(), Some(0.02));
        assert_eq!(v["zero"].as_f64(), Some(0.0));
        assert_eq!(v["long"].as_f64(), Some(3_723_000.005));
        for (key, addr) in [
            ("v4", "127.0.0.1:8080"),
            ("v4_edges", "255.0.10.99:0"),
            ("v6", "[::1]:443"),
            ("v6_scoped", "[fe80::1%2]:65535"),
        ] {
            let parsed: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(v[key], parsed.to_string(), "as Display writes it");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_comes_back_as_it_was(s in ".*", raw in proptest::collection::vec(0u8..0x80, 0..40)) {
            let raw = String::from_utf8(raw).unwrap();
            let v = line(|l| { l.str(json_key!("a"), &s).str(json_key!("b"), &raw); });
            proptest::prop_assert_eq!(v["a"].as_str(), Some(s.as_str()));
            proptest::prop_assert_eq!(v["b"].as_str(), Some(raw.as_str()));
        }

        /// The date and time agree with `httpdate`'s (IMF-fixdate, to the second), any second
        /// from 1970 to 2400.
        #[test]
        fn timestamps_agree_with_http_dates(secs in 0u64..13_569_465_600, us in 0u32..1_000_000) {
            let t = std::time::UNIX_EPOCH + Duration::new(secs, us * 1000);
            let mut out = Vec::new();
            rfc3339_micros(t, &mut out);
            let ours = String::from_utf8(out).unwrap();
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let http = httpdate::fmt_http_date(t);
            let p: Vec<&str> = http.split(' ').collect();
            let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                .iter()
                .position(|m| *m == p[2])
                .unwrap() + 1;
            let expected = format!("{}-{month:02}-{}T{}.{us:06}Z", p[3], p[1], p[4]);
            proptest::prop_assert_eq!(ours, expected);
        }
    }

    #[test]
    fn timestamps_at_known_moments() {
        let at = |secs: u64, us: u32| {
            let mut out = Vec::new();
            rfc3339_micros(
                std::time::UNIX_EPOCH + Duration::new(secs, us * 1000),
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(1_796_066_025, 36_957), "2026-11-30T19:13:45.036957Z");
    }
}
