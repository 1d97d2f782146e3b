//! The progress display as users see it: under a real pseudo-terminal of
//! 80 columns (the status line fits it and keeps ticking while make is
//! silent) and off a terminal (heartbeat lines on a timer, not on output).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Fixture;
use nix::pty::{Winsize, openpty};

/// What ktstr wrote to a terminal, raw, and its exit status.
struct TtyRun {
    raw: String,
    code: Option<i32>,
    stdout: String,
}

/// Run ktstr with stderr on the slave side of an 80x24 pty; stdout stays
/// a pipe (it carries the image path, as in `$(ktstr build ...)`).
fn run_on_tty(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> TtyRun {
    let size = Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let mut cmd = fx.command(args);
    cmd.env_remove("COLUMNS")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(pty.slave));
    let mut child = cmd.spawn().expect("spawn ktstr");
    // Our copy of the slave is gone with `cmd`: EOF (EIO) once ktstr and
    // make have exited.
    drop(cmd);
    let reader = std::thread::spawn(move || read_master(pty.master));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    let raw = reader.join().unwrap();
    TtyRun {
        raw,
        code: status.code(),
        stdout,
    }
}

fn read_master(master: OwnedFd) -> String {
    let mut file = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // Linux reports a closed slave as EIO.
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Remove CSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every drawn status line: the text between carriage returns, line feeds
/// and escape sequences that starts like one (`ktstr: [3s] ...`).
fn status_draws(raw: &str) -> Vec<String> {
    raw.split(['\n', '\r'])
        .flat_map(|seg| seg.split('\x1b'))
        .map(|seg| strip_ansi(&format!("\x1b{seg}")))
        .map(|seg| seg.trim_start_matches('\x1b').to_string())
        .filter(|seg| seg.starts_with("ktstr: [") && seg.contains("s] "))
        .collect()
}

fn elapsed_of(draw: &str) -> &str {
    let rest = draw.strip_prefix("ktstr: [").unwrap();
    &rest[..rest.find(']').unwrap()]
}

#[test]
fn the_status_line_fits_80_columns_and_ticks_while_make_is_silent() {
    let fx = Fixture::git();
    // A long make line (make echoes the compile command with KCFLAGS), to
    // be cut to the terminal's width, not wrapped.
    let long_flags = format!("-DKTSTR_LONG_FLAG_{}=1", "X".repeat(120));
    let tree = fx.tree.to_str().unwrap().to_string();
    let run = run_on_tty(
        &fx,
        &["build", "--kernel", &tree],
        &[
            ("KTSTR_FIXTURE_BUILD_SECONDS", "5"),
            ("KCFLAGS", &long_flags),
        ],
    );
    let shown = strip_ansi(&run.raw);
    assert_eq!(run.code, Some(0), "{shown}");
    assert!(run.stdout.trim().ends_with("bzImage"), "{}", run.stdout);
    let draws = status_draws(&run.raw);
    assert!(!draws.is_empty(), "no status line was drawn:\n{shown}");
    for draw in &draws {
        let width = draw.trim_end().chars().count();
        assert!(
            width <= 80,
            "a status line of {width} columns wraps an 80-column terminal: {draw:?}"
        );
    }
    assert!(
        draws.iter().any(|d| d.contains("KTSTR_LONG_FLAG_XXX")),
        "the long make line should be shown, cut to fit: {draws:#?}"
    );
    // While make sleeps it prints nothing; the line still counts seconds.
    let silent: Vec<&str> = draws
        .iter()
        .filter(|d| d.contains("building"))
        .map(|d| elapsed_of(d))
        .collect();
    let mut seconds: Vec<&str> = silent.clone();
    seconds.dedup();
    // A 1 s tick that drifts can skip a displayed second; what must hold
    // is that the count goes up, several times, while make is silent.
    let counted: Vec<u64> = (seconds.iter())
        .filter_map(|s| s.strip_suffix('s')?.parse().ok())
        .filter(|&n| n > 0)
        .collect();
    assert!(
        counted.len() >= 3 && counted.windows(2).all(|w| w[0] < w[1]),
        "the silent build step should count up its elapsed seconds; it showed {seconds:?}"
    );
    // Whole lines still arrive, prefixed, and the status line is erased
    // before each: none is glued to a status line.
    let lines: Vec<String> = shown
        .split('\n')
        // The tty turns \n into \r\n; what is left of a line after its
        // last other \r is what stays on screen.
        .map(|l| {
            let l = l.trim_end_matches('\r');
            l.rsplit('\r').next().unwrap_or("").trim_end().to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ktstr: building (make -j")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ktstr: cached ")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(
            l.starts_with("ktstr: "),
            "unprefixed stderr line {l:?} in\n{shown}"
        );
    }
}

#[test]
fn off_a_terminal_a_silent_step_gets_heartbeats_on_a_timer() {
    let fx = Fixture::git();
    let mut child = fx.spawn_build(
        &[],
        &[
            ("KTSTR_FIXTURE_BUILD_SECONDS", "3"),
            ("KTSTR_HEARTBEAT_MS", "500"),
        ],
    );
    let start = Instant::now();
    let stderr = child.child.stderr.take().unwrap();
    let lines: Vec<(Duration, String)> = BufReader::new(stderr)
        .lines()
        .map(|l| (start.elapsed(), l.unwrap()))
        .collect();
    let run = child.wait(Duration::from_secs(60));
    assert_eq!(run.code(), Some(0), "{lines:#?}");
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        !text.iter().any(|l| l.contains('\r') || l.contains('\x1b')),
        "no status line or colour off a terminal: {text:#?}"
    );
    let beats: Vec<Duration> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("ktstr: building (make -j") && l.contains(" elapsed, "))
        .map(|(t, _)| *t)
        .collect();
    // 3 s of silence at one beat per 0.5 s: make printed nothing, so each
    // of these came from the timer.
    assert!(
        beats.len() >= 4,
        "expected heartbeats every 0.5 s: {text:#?}"
    );
    // The times are when this test read the lines, so one late read puts
    // two beats together; their mean spacing is what the timer sets.
    let mean = (beats[beats.len() - 1] - beats[0]) / (beats.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(300) && mean <= Duration::from_millis(1000),
        "heartbeats {mean:?} apart on average, expected ~0.5 s: {text:#?}"
    );
    for pair in beats.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= Duration::from_millis(2500),
            "heartbeats {gap:?} apart, expected ~0.5 s: {text:#?}"
        );
    }
    let took = text
        .iter()
        .position(|l| l.starts_with("ktstr: building (make -j") && l.contains(" took "))
        .expect("the step ends with `took`");
    assert!(
        !text[took..].iter().any(|l| l.contains(" elapsed, ")),
        "no heartbeat after the step ended: {text:#?}"
    );
}

#[test]
fn a_dumb_terminal_gets_heartbeats_not_a_status_line() {
    let fx = Fixture::git();
    let tree = fx.tree.to_str().unwrap().to_string();
    let run = run_on_tty(
        &fx,
        &["build", "--kernel", tree.as_str()],
        &[
            ("TERM", "dumb"),
            ("KTSTR_FIXTURE_BUILD_SECONDS", "2"),
            ("KTSTR_HEARTBEAT_MS", "500"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.raw);
    assert!(
        !run.raw.contains('\x1b'),
        "TERM=dumb: no escape sequences: {:?}",
        run.raw
    );
    assert!(
        run.raw.contains(" elapsed, "),
        "TERM=dumb: the off-terminal heartbeat instead: {}",
        run.raw
    );
}

#[test]
fn log_events_are_coloured_on_a_terminal_unless_no_color() {
    let fx = Fixture::git();
    let tree = fx.tree.to_str().unwrap().to_string();
    let args = ["-v", "build", "--kernel", tree.as_str()];
    let coloured = run_on_tty(&fx, &args, &[]);
    assert_eq!(coloured.code, Some(0), "{}", coloured.raw);
    assert!(
        coloured.raw.contains("ktstr: \x1b[34mdebug\x1b[0m: "),
        "-v on a terminal colours the level: {:?}",
        coloured.raw
    );
    let plain = run_on_tty(&fx, &args, &[("NO_COLOR", "1")]);
    assert_eq!(plain.code, Some(0), "{}", plain.raw);
    assert!(
        !plain.raw.contains('\x1b'),
        "NO_COLOR: no escape sequence at all: {:?}",
        plain.raw
    );
    assert!(plain.raw.contains("ktstr: debug: "), "{:?}", plain.raw);
}

/// An HTTP server handing out `body` slowly: 64 KiB every 150 ms, with
/// its length announced, as a distant mirror would. Serves until dropped
/// with the test.
fn trickle_server(body: Vec<u8>) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => return,
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: \
                     application/x-tar\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in body.chunks(64 << 10) {
                    std::thread::sleep(Duration::from_millis(150));
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A `.tar` of the fixture tree with `pad` bytes of incompressible
/// padding (1.5 MiB: a download of a few seconds at the trickle pace).
fn padded_tarball(fx: &Fixture, pad: u32) -> Vec<u8> {
    let work = fx.root.path().join("tarball-work");
    let top = work.join("linux-6.99.0");
    common::copy_dir(&common::fixture_src(), &top);
    let padding: Vec<u8> = (0..pad)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(top.join("padding.bin"), padding).unwrap();
    let tar = work.join("linux-6.99.0.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&work)
        .arg("linux-6.99.0")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(tar).unwrap()
}

#[test]
fn a_download_shows_bytes_rate_and_eta_on_and_off_a_terminal() {
    let fx = Fixture::git();
    let url = format!(
        "{}/linux-6.99.0.tar",
        trickle_server(padded_tarball(&fx, 3 << 19))
    );
    // Off a terminal: heartbeats carry the transfer.
    let mut child = fx.spawn(
        &["build", "--kernel", &url],
        &[("KTSTR_HEARTBEAT_MS", "500")],
    );
    let stderr = child.child.stderr.take().unwrap();
    let lines: Vec<String> = BufReader::new(stderr).lines().map(Result::unwrap).collect();
    let run = child.wait(Duration::from_secs(120));
    assert_eq!(run.code(), Some(0), "{lines:#?}");
    let beats: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("ktstr: fetching linux-6.99.0.tar... ") && l.contains(" of "))
        .collect();
    assert!(!beats.is_empty(), "no download heartbeat: {lines:#?}");
    assert!(
        beats
            .iter()
            .any(|l| l.contains(" MiB (") && l.contains("/s, ETA ")),
        "a heartbeat shows bytes of the total, the rate and the time left: {beats:#?}"
    );

    // On a terminal: the status line does, within 80 columns.
    let tty = run_on_tty(&fx, &["build", "--force", "--kernel", &url], &[]);
    let shown = strip_ansi(&tty.raw);
    assert_eq!(tty.code, Some(0), "{shown}");
    let draws = status_draws(&tty.raw);
    let transfer: Vec<&String> = draws
        .iter()
        .filter(|d| d.contains(" MiB of 1.5 MiB (") && d.contains("/s, ETA "))
        .collect();
    assert!(
        !transfer.is_empty(),
        "no transfer on the status line: {draws:#?}"
    );
    for draw in &draws {
        assert!(draw.trim_end().chars().count() <= 80, "{draw:?}");
    }
}

#[test]
fn very_verbose_adds_the_debug_events_of_libraries_prefixed() {
    let fx = Fixture::git();
    let url = format!(
        "{}/linux-6.99.0.tar",
        trickle_server(padded_tarball(&fx, 0))
    );
    let v = fx.run(&["-v", "build", "--kernel", &url]);
    v.assert_ok();
    let vv = fx.run(&["-vv", "build", "--force", "--kernel", &url]);
    vv.assert_ok();
    let library = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| l.starts_with("ktstr: debug: ") && !l.starts_with("ktstr: debug: ktstr"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(library(&v.stderr).is_empty(), "{}", v.describe());
    let events = library(&vv.stderr);
    // The HTTP client's connection, named by its real module, not `log`.
    assert!(
        events.iter().any(|l| l.contains("connect")),
        "-vv shows the HTTP client's debug events\n{}",
        vv.describe()
    );
    assert!(
        !events.iter().any(|l| l.starts_with("ktstr: debug: log: ")),
        "{events:#?}"
    );
}
