//! One plugin process and the calls made to it, one at a time.
//!
//! A call writes its request and waits for the response, forwarding the
//! plugin's progress notifications to the caller's `StageContext`
//! meanwhile. It fails — and the process is killed with its process group
//! — when the plugin exits, says nothing for the call's timeout, writes
//! something that is not a protocol message, or does not stop after a
//! cancel. From then on every call fails at once with that same error:
//! one failure, one message, never a half-working plugin.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktstr_sdk::context::StageContext;
use ktstr_sdk::{ErrorKind, Result, StageError};
use serde_json::{Value, json};

use super::PROTOCOL;
use super::factory::TIMEOUT_KEY;
use super::framing::{self, Incoming, Message, SendError};
use super::handshake::{self, SETUP_TIMEOUT};
use super::memo::Memo;
use super::spawn::Process;

/// How long a plugin may take to answer after a cancel before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// How often a waiting call checks for cancellation.
const POLL: Duration = Duration::from_millis(50);

/// The running plugin, or why it is not running any more.
pub struct Conn {
    /// The plugin's name, and `team-cache (/path/ktstr-plugin-team-cache)`
    /// for messages.
    name: String,
    label: String,
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    process: Option<Process>,
    rx: Option<Receiver<Incoming>>,
    next_id: u64,
    dead: Option<StageError>,
    /// Not started yet: the first call starts it and checks its handshake
    /// against the one remembered here.
    lazy: Option<Option<Arc<Memo>>>,
}

impl Conn {
    fn new(path: &Path, name: &str, state: State) -> Self {
        Self {
            name: name.to_string(),
            label: format!("{name} ({})", path.display()),
            path: path.to_path_buf(),
            state: Mutex::new(state),
        }
    }

    /// Start the plugin at `path` now; `name` is what it is known as so far.
    pub fn start(path: &Path, name: &str, protocol: u32) -> Result<Self> {
        let conn = Self::lazy(path, name, None);
        {
            let mut state = conn.lock()?;
            state.lazy = None;
            conn.spawn(&mut state, protocol)?;
        }
        Ok(conn)
    }

    /// The plugin at `path`, started by its first call, which shakes
    /// hands first (and forgets `memo` if the plugin no longer answers
    /// as remembered).
    pub fn lazy(path: &Path, name: &str, memo: Option<Arc<Memo>>) -> Self {
        Self::new(
            path,
            name,
            State {
                process: None,
                rx: None,
                next_id: 0,
                dead: None,
                lazy: Some(memo),
            },
        )
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| StageError::internal(format!("plugin {}: poisoned", self.label)))
    }

    fn spawn(&self, state: &mut State, protocol: u32) -> Result<()> {
        let mut process = Process::spawn(&self.path, &self.name, protocol).map_err(|e| {
            StageError::io(&format!("cannot start plugin {}:", self.name), &self.path, e)
                .with_hint(format!(
                    "a process plugin must be an executable file (chmod +x {}; a script needs a #! line)",
                    self.path.display()
                ))
        })?;
        state.rx = process.stdout.take().map(framing::reader);
        tracing::debug!("started plugin {} as pid {}", self.label, process.pid());
        state.process = Some(process);
        Ok(())
    }

    /// A lazily started plugin's start and handshake, at its first call.
    fn start_now(&self, state: &mut State, memo: Option<Arc<Memo>>) -> Result<()> {
        let failed = |state: &mut State, e: StageError| {
            if let Some(p) = state.process.as_mut() {
                p.kill();
            }
            if let Some(m) = &memo {
                m.forget();
            }
            state.dead = Some(e.clone());
            e
        };
        if let Err(e) = self.spawn(state, PROTOCOL) {
            return Err(failed(state, e));
        }
        let answer = match self.exchange(state, "hello", handshake::params(), None, SETUP_TIMEOUT) {
            Ok(v) => v,
            Err(e) if state.dead.is_some() => return Err(failed(state, e)),
            Err(e) => return Err(failed(state, handshake::refused(&self.path, &self.name, e))),
        };
        let hello =
            handshake::check(&self.path, &self.name, answer).map_err(|e| failed(state, e))?;
        if let Some(m) = &memo {
            m.record_hello(&hello);
        }
        Ok(())
    }

    /// A plugin that never started properly: every call fails with `error`.
    pub fn failed(path: &Path, name: &str, error: StageError) -> Self {
        Self::new(
            path,
            name,
            State {
                process: None,
                rx: None,
                next_id: 0,
                dead: Some(error),
                lazy: None,
            },
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Now that the handshake named the plugin, use its name in messages.
    pub fn rename(&mut self, name: &str) {
        self.name = name.to_string();
        self.label = format!("{name} ({})", self.path.display());
    }

    /// Whether the plugin failed and is not used any more.
    pub fn is_dead(&self) -> bool {
        self.state.lock().map_or(true, |s| s.dead.is_some())
    }

    /// The pid of the running plugin (tests look for orphans with it).
    pub fn pid(&self) -> Option<u32> {
        let state = self.state.lock().ok()?;
        state.process.as_ref().map(Process::pid)
    }

    /// Call `method` with `params`: the plugin's `result`, or its `error`
    /// as a `StageError`. `cx` receives progress and may cancel; `timeout`
    /// is the longest the plugin may stay silent.
    pub fn call(
        &self,
        method: &str,
        params: Value,
        cx: Option<&StageContext>,
        timeout: Duration,
    ) -> Result<Value> {
        let mut state = self.lock()?;
        // An interrupted run starts nothing new, as a stage's own
        // `cx.cancel.check()` would.
        if let Some(cx) = cx {
            cx.cancel.check()?;
        }
        if let Some(e) = &state.dead {
            return Err(e.clone());
        }
        if let Some(memo) = state.lazy.take() {
            self.start_now(&mut state, memo)?;
        }
        self.exchange(&mut state, method, params, cx, timeout)
    }

    /// Send one request and wait for its response.
    fn exchange(
        &self,
        state: &mut State,
        method: &str,
        params: Value,
        cx: Option<&StageContext>,
        timeout: Duration,
    ) -> Result<Value> {
        let id = state.next_id;
        state.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        let sent = match state.process.as_ref().and_then(|p| p.stdin.as_ref()) {
            Some(stdin) => framing::send(stdin, &request, timeout),
            None => Err(SendError::Closed(std::io::ErrorKind::BrokenPipe.into())),
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Closed(e)) => {
                tracing::debug!("plugin {}: writing {method} failed: {e}", self.label);
                return Err(self.die(state, method, Failure::Exited));
            }
            Err(SendError::Stuck) => {
                let why = "did not read its stdin".to_string();
                return Err(self.die(state, method, Failure::Protocol(why)));
            }
        }
        self.wait(state, id, method, cx, timeout)
    }

    fn wait(
        &self,
        state: &mut State,
        id: u64,
        method: &str,
        cx: Option<&StageContext>,
        timeout: Duration,
    ) -> Result<Value> {
        let mut heard = Instant::now();
        let mut cancelled_at: Option<Instant> = None;
        loop {
            let Some(rx) = state.rx.as_ref() else {
                return Err(self.die(state, method, Failure::Exited));
            };
            let got = rx.recv_timeout(POLL);
            match got {
                Ok(Incoming::Line(line)) => {
                    heard = Instant::now();
                    match framing::parse(&line) {
                        Ok(Message::Response { id: got, outcome }) if got == id => {
                            return outcome.map_err(|e| self.plugin_error(method, e));
                        }
                        Ok(Message::Response { id: got, .. }) => {
                            let why = format!("answered request {got} while {id} was pending");
                            return Err(self.die(state, method, Failure::Protocol(why)));
                        }
                        Ok(Message::Notification { method: n, params }) => {
                            notify(cx, &n, &params, &self.label);
                        }
                        Err(why) => {
                            let shown: String = line.chars().take(120).collect();
                            let why = format!("{shown:?} ({why})");
                            return Err(self.die(state, method, Failure::Garbage(why)));
                        }
                    }
                }
                Ok(Incoming::TooLong) => {
                    let why = format!("a line longer than {} MiB", framing::MAX_LINE >> 20);
                    return Err(self.die(state, method, Failure::Garbage(why)));
                }
                Ok(Incoming::NotUtf8) => {
                    let why = "bytes that are not UTF-8".to_string();
                    return Err(self.die(state, method, Failure::Garbage(why)));
                }
                Ok(Incoming::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.die(state, method, Failure::Exited));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(at) = cancelled_at {
                if at.elapsed() > CANCEL_GRACE {
                    let _ = self.die(state, method, Failure::IgnoredCancel);
                    return Err(StageError::cancelled());
                }
            } else if cx.is_some_and(|cx| cx.cancel.is_cancelled()) {
                let cancel = json!({"method": "cancel", "params": {"id": id}});
                if let Some(stdin) = state.process.as_ref().and_then(|p| p.stdin.as_ref()) {
                    // Not read in time: the grace period below still ends it.
                    let _ = framing::send(stdin, &cancel, CANCEL_GRACE);
                }
                cancelled_at = Some(Instant::now());
            }
            if cancelled_at.is_none() && heard.elapsed() > timeout {
                return Err(self.die(state, method, Failure::Silent(timeout)));
            }
        }
    }

    /// The plugin's own error object as a `StageError`; its hint and
    /// message are kept, so they reach the user as the plugin wrote them.
    fn plugin_error(&self, method: &str, error: Value) -> StageError {
        match serde_json::from_value::<WireError>(error.clone()) {
            Ok(e) => StageError {
                kind: serde_json::from_value(Value::String(e.kind.clone()))
                    .unwrap_or(ErrorKind::Internal),
                message: e.message,
                hint: e.hint,
                causes: e.causes,
            },
            Err(_) => StageError::internal(format!(
                "plugin {} answered {method} with an error that is not an error object: {error}",
                self.label
            ))
            .with_hint(
                "an error is {\"kind\", \"message\", \"hint\", \"causes\"}: see `ktstr docs plugin-protocol`",
            ),
        }
    }

    /// Record why the plugin is unusable, kill it and its process group,
    /// and return the error every later call gets.
    fn die(&self, state: &mut State, method: &str, failure: Failure) -> StageError {
        let during = if method == "hello" {
            "during the handshake".to_string()
        } else {
            format!("during {method}")
        };
        let (what, last_words) = match state.process.as_mut() {
            Some(p) => {
                let status = match failure {
                    Failure::Exited => p.exited_within(Duration::from_secs(1)),
                    _ => None,
                };
                p.kill();
                let what = match (&failure, status) {
                    (Failure::Exited, Some(status)) if status.starts_with("killed") => {
                        format!("died {during} ({status})")
                    }
                    (Failure::Exited, Some(status)) => format!("exited {during} ({status})"),
                    (Failure::Exited, None) => {
                        format!("closed its stdout {during} (killed it)")
                    }
                    (Failure::Silent(t), _) => {
                        format!("sent nothing for {} s {during}; killed it", t.as_secs_f32())
                    }
                    (Failure::Garbage(why), _) => format!(
                        "wrote something that is not a protocol message on stdout {during}: {why}; killed it"
                    ),
                    (Failure::Protocol(why), _) => {
                        format!("broke the protocol {during}: {why}; killed it")
                    }
                    (Failure::IgnoredCancel, _) => format!(
                        "did not stop within {} s of the cancel {during}; killed it",
                        CANCEL_GRACE.as_secs()
                    ),
                };
                (what, p.last_stderr_line())
            }
            None => (format!("is not running {during}"), None),
        };
        let mut message = format!("plugin {} {what}", self.label);
        if let Some(line) = last_words {
            let line: String = line.chars().take(200).collect();
            message.push_str(&format!("; its stderr ended with: {line}"));
        }
        let hint = match failure {
            Failure::Silent(_) => format!(
                "it is not used again in this run; a plugin must report progress during long calls, or raise {TIMEOUT_KEY} in [plugin.{}] (`ktstr docs plugin-protocol`)",
                self.name
            ),
            Failure::Garbage(_) => "it is not used again in this run; a plugin writes only protocol messages to stdout and logs to stderr (`ktstr docs plugin-protocol`)".to_string(),
            _ => "it is not used again in this run; `ktstr -v` shows its stderr, and `ktstr docs plugin-protocol` how to test it by hand".to_string(),
        };
        let error = StageError::internal(message).with_hint(hint);
        state.dead = Some(error.clone());
        state.rx = None;
        error
    }

    /// Close the plugin's stdin and wait for it to exit (then kill it).
    pub fn shut_down(&self) {
        if let Ok(mut state) = self.state.lock()
            && let Some(mut p) = state.process.take()
        {
            p.shut_down();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shut_down();
    }
}

enum Failure {
    Exited,
    Silent(Duration),
    Garbage(String),
    Protocol(String),
    IgnoredCancel,
}

#[derive(serde::Deserialize)]
struct WireError {
    kind: String,
    message: String,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    causes: Vec<String>,
}

/// Forward one notification to the call's progress sink.
fn notify(cx: Option<&StageContext>, method: &str, params: &Value, label: &str) {
    let Some(cx) = cx else {
        tracing::debug!("plugin {label}: {method} outside a stage call: {params}");
        return;
    };
    let text = |key: &str| params.get(key).and_then(Value::as_str).unwrap_or("");
    let p = &cx.progress;
    match method {
        "progress.step" => p.step(text("name")),
        "progress.line" => p.line(text("line")),
        "progress.finish_step" => p.finish_step(),
        "progress.warn" => p.warn(text("message")),
        "progress.note" => p.note(text("message")),
        "progress.bytes" => p.bytes(
            params.get("done").and_then(Value::as_u64).unwrap_or(0),
            params.get("total").and_then(Value::as_u64),
        ),
        other => tracing::debug!("plugin {label}: ignoring unknown notification {other}"),
    }
}
