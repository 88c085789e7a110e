//! `loadgen`'s command line, run as a process: what it refuses before any load starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

fn loadgen(args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn an_output_file_that_cannot_be_written_fails_before_the_load() {
    let missing = std::env::temp_dir().join(format!("loadgen-cli-{}-missing", std::process::id()));
    for flag in ["--samples", "--report"] {
        let path = missing.join("out.file");
        let path = path.to_str().unwrap();
        // Port 9 on loopback: nothing is sent, since the command stops first. Without the
        // early check the run would last its 120 s and only then fail the same way, so the
        // time it took is what tells the two apart.
        let (code, stderr, took) = loadgen(&[
            "--url",
            "http://127.0.0.1:9",
            "--duration",
            "120",
            "--quiet",
            flag,
            path,
        ]);
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains("cannot write") && stderr.contains(path),
            "{flag}: {stderr}"
        );
        assert!(
            took < Duration::from_secs(60),
            "{flag}: the load ran ({took:?})"
        );
    }
}

#[test]
fn a_target_off_this_machine_is_refused_without_allow_remote() {
    let (code, stderr, _) = loadgen(&["--url", "http://192.0.2.1:80", "--duration", "1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
}
