//! Line framing: one JSON object per line each way.
//!
//! The plugin's stdout is read on a thread of its own so a call can wait
//! for a message with a timeout, watch for cancellation meanwhile, and
//! notice end of output. A line is bounded ([`MAX_LINE`]): a plugin that
//! writes endlessly without a newline is broken, not a reason to run out
//! of memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The longest message accepted. Artifacts travel as paths, so real
/// messages are small; a `cache.list` of many entries is the largest.
pub const MAX_LINE: usize = 64 << 20;

/// What the reader thread saw on the plugin's stdout.
#[derive(Debug)]
pub enum Incoming {
    Line(String),
    /// More than [`MAX_LINE`] bytes without a newline.
    TooLong,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// End of output: the plugin exited or closed its stdout.
    Eof,
}

/// Read `stdout` line by line on a new thread until end of output.
pub fn reader(stdout: ChildStdout) -> mpsc::Receiver<Incoming> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("ktstr-plugin-stdout".into())
        .spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                let got = (&mut stdout)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf);
                let msg = match got {
                    Ok(0) | Err(_) => Incoming::Eof,
                    Ok(_) if !buf.ends_with(b"\n") && buf.len() > MAX_LINE => Incoming::TooLong,
                    Ok(_) => match String::from_utf8(buf) {
                        Ok(s) => Incoming::Line(s.trim_end_matches(['\n', '\r']).to_string()),
                        Err(_) => Incoming::NotUtf8,
                    },
                };
                let last = matches!(msg, Incoming::Eof | Incoming::TooLong);
                if tx.send(msg).is_err() || last {
                    break;
                }
            }
        });
    rx
}

/// Why a message could not be written.
#[derive(Debug)]
pub enum SendError {
    /// The pipe is closed: the plugin exited.
    Closed(std::io::Error),
    /// The plugin did not read it within the time allowed (a full pipe).
    Stuck,
}

/// Write one message, giving up after `within`: a plugin that stops
/// reading its stdin fills the pipe, and a blocked write must not hang
/// ktstr. The write runs on a thread of its own, which ends when the
/// plugin is killed (the write then fails).
pub fn send(stdin: &File, message: &Value, within: Duration) -> Result<(), SendError> {
    let mut line = serde_json::to_vec(message).map_err(|e| SendError::Closed(e.into()))?;
    line.push(b'\n');
    let mut pipe = stdin.try_clone().map_err(SendError::Closed)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("ktstr-plugin-stdin".into())
        .spawn(move || {
            let _ = tx.send(pipe.write_all(&line).and_then(|()| pipe.flush()));
        })
        .map_err(SendError::Closed)?;
    match rx.recv_timeout(within) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Closed(e)),
        Err(_) => Err(SendError::Stuck),
    }
}

/// A message from the plugin, classified.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// A response to request `id`.
    Response {
        id: u64,
        outcome: Result<Value, Value>,
    },
    /// A notification (`progress.line`, ...).
    Notification { method: String, params: Value },
}

/// Classify one line; `Err` says what is wrong with it, for the message
/// that names the plugin.
pub fn parse(line: &str) -> Result<Message, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = value else {
        return Err("not a JSON object".into());
    };
    if let Some(id) = obj.get("id") {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("its id {id} is not a request id"))?;
        let outcome = match (obj.remove("result"), obj.remove("error")) {
            (_, Some(err)) if !err.is_null() => Err(err),
            (Some(result), _) => Ok(result),
            (None, _) => return Err("a response with neither result nor error".into()),
        };
        return Ok(Message::Response { id, outcome });
    }
    match obj.remove("method") {
        Some(Value::String(method)) => Ok(Message::Notification {
            method,
            params: obj.remove("params").unwrap_or(Value::Null),
        }),
        _ => Err("neither a response (no id) nor a notification (no method)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_notifications_and_garbage_are_told_apart() {
        assert_eq!(
            parse(r#"{"id":3,"result":true}"#),
            Ok(Message::Response {
                id: 3,
                outcome: Ok(json!(true))
            })
        );
        assert_eq!(
            parse(r#"{"id":3,"result":null}"#),
            Ok(Message::Response {
                id: 3,
                outcome: Ok(Value::Null)
            })
        );
        assert_eq!(
            parse(r#"{"id":4,"error":{"kind":"io","message":"x"}}"#),
            Ok(Message::Response {
                id: 4,
                outcome: Err(json!({"kind":"io","message":"x"}))
            })
        );
        assert_eq!(
            parse(r#"{"method":"progress.line","params":{"line":"a"}}"#),
            Ok(Message::Notification {
                method: "progress.line".into(),
                params: json!({"line":"a"})
            })
        );
        assert!(parse("hello world").unwrap_err().starts_with("not JSON"));
        assert_eq!(parse("[1]").unwrap_err(), "not a JSON object");
        assert!(parse(r#"{"id":"x","result":1}"#).is_err());
        assert!(parse(r#"{"id":1}"#).unwrap_err().contains("neither result"));
        assert!(
            parse(r#"{"x":1}"#)
                .unwrap_err()
                .contains("neither a response")
        );
    }
}
