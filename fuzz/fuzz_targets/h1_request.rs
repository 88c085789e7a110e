//! The data port's HTTP/1.1 request parsing (head, framing, chunked bodies, pipelining) on
//! arbitrary bytes arriving in two reads: it must answer or wait, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway::h1::fuzz_request(data);
});
