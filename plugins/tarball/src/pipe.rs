//! Bounded channels joining the pipeline's threads (download → decompress
//! → extract), seen as `Read`/`Write` so the decoders and the tar parser
//! need not know about threads.
//!
//! Bounding the channels is what keeps the stages overlapped without
//! buffering the whole archive: a fast download waits for decompression
//! instead of filling memory. The first stage that fails records its error
//! in a shared [`Failure`] before telling its consumer; downstream errors
//! caused by it ("upstream failed", a truncated stream) never replace it.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use ktstr_sdk::StageError;

/// Size of the chunks passed between stages.
pub const CHUNK: usize = 256 << 10;

pub enum Msg {
    Data(Vec<u8>),
    /// The producer failed; its error is in the [`Failure`] slot.
    Failed,
}

/// The first error of the pipeline.
#[derive(Clone, Default)]
pub struct Failure(Arc<Mutex<Option<StageError>>>);

impl Failure {
    /// Keep `err` unless an earlier stage already failed.
    pub fn record(&self, err: StageError) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
    }

    pub fn take(&self) -> Option<StageError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn is_set(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// A bounded channel of `depth` chunks.
pub fn channel(depth: usize) -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(depth);
    (
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

/// Marker text of the error a reader returns when its producer failed.
pub const UPSTREAM_FAILED: &str = "an earlier pipeline stage failed";

pub struct ChunkReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Msg::Data(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Msg::Failed) => return Err(io::Error::other(UPSTREAM_FAILED)),
                // The producer finished and dropped its end: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub struct ChunkWriter {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the next pipeline stage stopped")
}

impl ChunkWriter {
    /// Send one whole chunk (after whatever is buffered).
    pub fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.flush()?;
        self.tx.send(Msg::Data(chunk)).map_err(|_| gone())
    }

    /// Tell the consumer this stage failed (its error is already recorded).
    pub fn fail(self) {
        let _ = self.tx.send(Msg::Failed);
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Msg::Data(chunk)).map_err(|_| gone())
    }
}

/// Whether `err` only says that an earlier stage failed.
pub fn is_upstream(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other && err.to_string() == UPSTREAM_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_flow_in_order_and_end_at_drop() {
        let (mut w, mut r) = channel(2);
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
            }
            w.flush().unwrap();
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        t.join().unwrap();
        assert_eq!(all.len(), 4000);
        assert_eq!(&all[3996..], &999u32.to_le_bytes());
    }

    #[test]
    fn failure_is_seen_by_the_reader_and_first_error_wins() {
        let failure = Failure::default();
        let (mut w, mut r) = channel(2);
        w.send(b"abc".to_vec()).unwrap();
        failure.record(StageError::internal("first"));
        failure.record(StageError::internal("second"));
        w.fail();
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let err = r.read(&mut buf).unwrap_err();
        assert!(is_upstream(&err));
        assert_eq!(failure.take().unwrap().message, "first");
    }
}
