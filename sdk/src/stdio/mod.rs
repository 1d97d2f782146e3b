//! Serving a plugin over stdin/stdout: the process transport
//! (docs/plugin-protocol.md), from the same [`Plugin`] description and the
//! same stage traits as a plugin library.
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     ktstr_sdk::stdio::serve(my_crate::plugin())
//! }
//! ```
//!
//! Installed as `ktstr-plugin-NAME` in a plugin directory, the binary is
//! found and used like the library. Each call gets a `StageContext` whose
//! progress becomes `progress.*` notifications, whose cancellation is set
//! by the host's `cancel`, and whose runner runs commands as children of
//! the plugin (stopped on cancellation). Stdout carries the protocol only:
//! `serve` moves the process's own stdout to stderr first, so a stray
//! `println!` is a log line, not a broken protocol.

mod dispatch;

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, mpsc};

use serde_json::{Value, json};

use crate::context::{Cancellation, Progress, StageContext};
use crate::error::StageError;
use crate::export::Plugin;
use crate::runner::InterruptibleRunner;

/// The protocol versions this SDK serves.
pub const PROTOCOLS: &[u32] = &[1];

/// Where protocol messages go: the original stdout, shared by the
/// responses and the notifications of the running call.
#[derive(Clone)]
struct Out(Arc<Mutex<std::fs::File>>);

impl Out {
    fn send(&self, message: &Value) {
        if let Ok(mut out) = self.0.lock() {
            let mut line = message.to_string();
            line.push('\n');
            // The host is gone if this fails; the read loop ends next.
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
    }

    fn notify(&self, method: &str, params: Value) {
        self.send(&json!({"method": method, "params": params}));
    }
}

/// A call's progress, as notifications.
struct Notifier(Out);

impl Progress for Notifier {
    fn step(&self, name: &str) {
        self.0.notify("progress.step", json!({ "name": name }));
    }
    fn line(&self, line: &str) {
        self.0.notify("progress.line", json!({ "line": line }));
    }
    fn finish_step(&self) {
        self.0.notify("progress.finish_step", json!({}));
    }
    fn warn(&self, message: &str) {
        self.0
            .notify("progress.warn", json!({ "message": message }));
    }
    fn note(&self, message: &str) {
        self.0
            .notify("progress.note", json!({ "message": message }));
    }
    fn bytes(&self, done: u64, total: Option<u64>) {
        self.0
            .notify("progress.bytes", json!({ "done": done, "total": total }));
    }
}

/// The running call's cancellation, and the ids the host cancelled (a
/// `cancel` may be read before its call starts).
#[derive(Default)]
struct Running {
    current: Mutex<Option<(u64, Cancellation)>>,
    cancelled: Mutex<HashSet<u64>>,
}

impl Running {
    fn start(&self, id: u64) -> Cancellation {
        let cancel = Cancellation::new();
        if self.cancelled.lock().is_ok_and(|c| c.contains(&id)) {
            cancel.cancel();
        }
        if let Ok(mut current) = self.current.lock() {
            *current = Some((id, cancel.clone()));
        }
        cancel
    }

    fn cancel(&self, id: u64) {
        if let Ok(mut c) = self.cancelled.lock() {
            c.insert(id);
        }
        if let Ok(current) = self.current.lock()
            && let Some((running, cancel)) = current.as_ref()
            && *running == id
        {
            cancel.cancel();
        }
    }
}

/// Serve `plugin` on stdin/stdout until the host closes stdin.
pub fn serve(plugin: Plugin) -> std::process::ExitCode {
    let out = match protocol_stdout() {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "{}: cannot set up stdout for the protocol: {e}",
                plugin.name
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let running = Arc::new(Running::default());
    let requests = read_requests(running.clone());
    let mut server = dispatch::Server::new(plugin);
    for request in requests {
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        let cancel = running.start(id.as_u64().unwrap_or(u64::MAX));
        let cx = StageContext {
            progress: Arc::new(Notifier(out.clone())),
            runner: Arc::new(InterruptibleRunner::new(cancel.clone())),
            cancel,
        };
        let response = match server.call(method, params, &cx) {
            Ok(result) => json!({"id": id, "result": result}),
            Err(e) => json!({"id": id, "error": error_json(&e)}),
        };
        if let Ok(mut current) = running.current.lock() {
            *current = None;
        }
        out.send(&response);
    }
    std::process::ExitCode::SUCCESS
}

/// A `StageError` as the protocol's error object (the same fields).
fn error_json(e: &StageError) -> Value {
    serde_json::to_value(e).unwrap_or_else(|_| json!({"kind": "internal", "message": e.message}))
}

/// Keep the real stdout for the protocol and point fd 1 at stderr.
fn protocol_stdout() -> std::io::Result<Out> {
    let stdout = std::io::stdout();
    let _lock = stdout.lock();
    let proto = nix::unistd::dup(&stdout)?;
    // SAFETY: fd 1 is replaced by a copy of fd 2; nothing holds fd 1 as an
    // owned descriptor (std's Stdout only borrows it).
    unsafe {
        if nix::libc::dup2(2, 1) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Out(Arc::new(Mutex::new(std::fs::File::from(proto)))))
}

/// Read requests on a thread of their own, so a `cancel` reaches the
/// running call while it works. The iterator ends at end of input.
fn read_requests(running: Arc<Running>) -> impl Iterator<Item = Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: fd 0 stays open for the process's lifetime; this thread
        // is its only reader.
        let stdin = unsafe { std::fs::File::from_raw_fd(0) };
        for line in std::io::BufReader::new(stdin).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let Ok(message) = serde_json::from_str::<Value>(&line) else {
                eprintln!("ignoring a line that is not JSON: {line}");
                continue;
            };
            if message.get("method").and_then(Value::as_str) == Some("cancel") {
                if let Some(id) = message["params"]["id"].as_u64() {
                    running.cancel(id);
                }
                continue;
            }
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    rx.into_iter()
}
