//! This node's events on disk: a bounded ring of two files in the state
//! directory, `events.jsonl` (one [`EventRecord`] per line, appended as
//! each event is logged) and `events.1.jsonl` (the one before). When the
//! current file passes [`MAX_FILE_BYTES`] it becomes the previous one,
//! which is dropped: at most twice that is kept. `tandem events` reads
//! both, here and on every peer ([`crate::peer_service`]).
//!
//! Appends are plain writes (the page cache keeps them across an agent's
//! crash; a node's crash may lose the last ones). A line that cannot be
//! read back (cut short by a crash, edited) is skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::status::EventRecord;

/// The current file.
pub const CURRENT: &str = "events.jsonl";
/// The previous file.
pub const PREVIOUS: &str = "events.1.jsonl";
/// Size at which the current file becomes the previous one.
pub const MAX_FILE_BYTES: u64 = 2 << 20;
/// Longest line read back (a longer one is skipped).
const MAX_LINE_BYTES: usize = 64 << 10;

/// The journal this agent appends to.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    /// Appends that failed (counted, never fatal: the log line and the
    /// status ring still have the event).
    pub failures: u64,
}

impl Journal {
    /// The journal in `dir` (the state directory), appended to from its end.
    pub fn open(dir: &Path) -> Journal {
        let mut j = Journal {
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            failures: 0,
        };
        j.reopen();
        j
    }

    fn reopen(&mut self) {
        let path = self.dir.join(CURRENT);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .ok();
        self.size = std::fs::metadata(&path).map_or(0, |m| m.len());
    }

    /// Appends one record; past [`MAX_FILE_BYTES`] the file is rotated.
    pub fn append(&mut self, r: &EventRecord) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            self.failures += 1;
            return;
        };
        line.push(b'\n');
        if self.size + line.len() as u64 > MAX_FILE_BYTES {
            let _ = std::fs::rename(self.dir.join(CURRENT), self.dir.join(PREVIOUS));
            self.reopen();
        }
        match self.file.as_mut().map(|f| f.write_all(&line)) {
            Some(Ok(())) => self.size += line.len() as u64,
            _ => {
                self.failures += 1;
                // The directory may have come back (space freed): try again
                // with the next event.
                self.reopen();
            }
        }
    }
}

/// The events kept in `dir` at or after `since_unix_ms`, oldest first, at
/// most the newest `max`.
pub fn read(dir: &Path, since_unix_ms: u64, max: usize) -> Vec<EventRecord> {
    let mut out = Vec::new();
    for name in [PREVIOUS, CURRENT] {
        let Ok(f) = File::open(dir.join(name)) else {
            continue;
        };
        let mut r = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Bounded: a line longer than MAX_LINE_BYTES is read no
            // further than that and skipped.
            match std::io::Read::take(&mut r, MAX_LINE_BYTES as u64).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') && line.len() >= MAX_LINE_BYTES {
                // Skip the rest of an over-long line.
                let mut rest = Vec::new();
                let _ = r.read_until(b'\n', &mut rest);
                continue;
            }
            if let Ok(e) = serde_json::from_slice::<EventRecord>(&line) {
                if e.at_unix_ms >= since_unix_ms {
                    out.push(e);
                }
            }
        }
    }
    out.sort_by_key(|e| e.at_unix_ms);
    let skip = out.len().saturating_sub(max);
    out.drain(..skip);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AgentEvent;

    fn rec(at: u64) -> EventRecord {
        let event = AgentEvent::NodeOnline {
            node: format!("n{at}"),
        };
        EventRecord {
            at_unix_ms: at,
            text: event.to_string(),
            event: Some(event),
        }
    }

    #[test]
    fn events_are_kept_across_a_restart_read_since_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path());
        for at in 1..=10 {
            j.append(&rec(at));
        }
        drop(j);
        // A restarted agent appends after what was there.
        let mut j = Journal::open(dir.path());
        j.append(&rec(11));
        let all = read(dir.path(), 0, 100);
        assert_eq!(all.len(), 11);
        assert_eq!(all[10].event, rec(11).event);
        assert_eq!(read(dir.path(), 8, 100).len(), 4);
        let newest = read(dir.path(), 0, 3);
        assert_eq!(
            newest.iter().map(|e| e.at_unix_ms).collect::<Vec<_>>(),
            vec![9, 10, 11]
        );
        // A damaged line is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(CURRENT))
            .unwrap()
            .write_all(b"{not json\n")
            .unwrap();
        assert_eq!(read(dir.path(), 0, 100).len(), 11);
        assert_eq!(j.failures, 0);
    }

    #[test]
    fn the_ring_keeps_two_files_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path());
        let line = serde_json::to_vec(&rec(1)).unwrap().len() as u64 + 1;
        let per_file = MAX_FILE_BYTES / line;
        let n = 3 * per_file;
        for at in 0..n {
            j.append(&rec(at));
        }
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        assert!(size(CURRENT) <= MAX_FILE_BYTES && size(PREVIOUS) <= MAX_FILE_BYTES);
        let kept = read(dir.path(), 0, usize::MAX);
        assert!(
            kept.len() as u64 <= 2 * per_file && kept.len() as u64 > per_file,
            "{}",
            kept.len()
        );
        assert_eq!(
            kept.last().unwrap().at_unix_ms,
            n - 1,
            "the newest are kept"
        );
    }
}
