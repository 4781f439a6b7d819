//! The record a drill worker keeps: one file per worker process, one line per event.
//!
//! Lines are tab-separated and written with one `write` each, unbuffered, so a worker killed
//! with SIGKILL leaves every line it wrote (the kernel has them) and at most nothing of the
//! line it was writing:
//!
//! ```text
//! S <id> <key> <seq> <ns>      a handler started
//! E <id> <key> <seq> <ns>      a handler finished: the side effect
//! X <ns> <received> <acked> <abandoned> <redelivered>   the worker's run ended (SIGTERM)
//! K <ns>                       the drill killed the worker (written by the drill)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch: the clock every worker and the drill share.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Appends lines to a worker's record file.
#[derive(Debug)]
pub struct RecordWriter {
    file: Mutex<File>,
}

impl RecordWriter {
    /// Opens (creating or appending to) the record at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    fn line(&self, line: String) -> io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes())
    }

    /// A handler started on `id`.
    pub fn start(&self, id: &str, key: &str, seq: u64) -> io::Result<()> {
        self.line(format!("S\t{id}\t{key}\t{seq}\t{}\n", now_ns()))
    }

    /// A handler finished `id` (its side effect).
    pub fn end(&self, id: &str, key: &str, seq: u64) -> io::Result<()> {
        self.line(format!("E\t{id}\t{key}\t{seq}\t{}\n", now_ns()))
    }

    /// The worker's run ended, with its counts.
    pub fn exit(
        &self,
        received: u64,
        acked: u64,
        abandoned: u64,
        redelivered: u64,
    ) -> io::Result<()> {
        self.line(format!(
            "X\t{}\t{received}\t{acked}\t{abandoned}\t{redelivered}\n",
            now_ns()
        ))
    }

    /// The drill killed the worker at `at`. Starts on a new line: the worker may have died
    /// in the middle of one.
    pub fn killed(&self, at: u64) -> io::Result<()> {
        self.line(format!("\nK\t{at}\n"))
    }
}

/// One line of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A handler started.
    Start(Mark),
    /// A handler finished.
    End(Mark),
    /// The worker's run ended by itself (SIGTERM), with its run report.
    Exit {
        /// When.
        at: u64,
        /// Deliveries received.
        received: u64,
        /// Deliveries acked.
        acked: u64,
        /// Deliveries still running at the end of the drain timeout, given back.
        abandoned: u64,
        /// Deliveries nacked for redelivery by the retry policy.
        redelivered: u64,
    },
    /// The drill killed the worker.
    Killed(u64),
}

/// Which event a start or end line is about, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Event id.
    pub id: String,
    /// Ordering key.
    pub key: String,
    /// Position of the event among its key's events.
    pub seq: u64,
    /// When (see [`now_ns`]).
    pub at: u64,
}

/// Everything one worker process recorded.
#[derive(Debug, Clone, Default)]
pub struct WorkerRecord {
    /// The worker's name (its file's name).
    pub worker: String,
    /// Its lines, in the order written.
    pub lines: Vec<Line>,
}

impl WorkerRecord {
    /// When the worker stopped handling: killed, or its run ended; `None` while it runs.
    pub fn stopped_at(&self) -> Option<u64> {
        self.lines.iter().rev().find_map(|l| match l {
            Line::Killed(at) | Line::Exit { at, .. } => Some(*at),
            _ => None,
        })
    }
}

fn parse(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.split('\t').collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    let mark = || {
        Some(Mark {
            id: (*f.get(1)?).to_owned(),
            key: (*f.get(2)?).to_owned(),
            seq: n(3)?,
            at: n(4)?,
        })
    };
    match *f.first()? {
        "S" if f.len() == 5 => mark().map(Line::Start),
        "E" if f.len() == 5 => mark().map(Line::End),
        "X" if f.len() == 6 => Some(Line::Exit {
            at: n(1)?,
            received: n(2)?,
            acked: n(3)?,
            abandoned: n(4)?,
            redelivered: n(5)?,
        }),
        "K" if f.len() == 2 => n(1).map(Line::Killed),
        _ => None,
    }
}

/// Reads one record file. A torn last line (a worker killed mid-write) is skipped; any other
/// unreadable line is an error.
pub fn read(path: &Path) -> io::Result<WorkerRecord> {
    let worker = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut lines = Vec::new();
    let raw: Vec<String> = BufReader::new(File::open(path)?)
        .lines()
        .collect::<Result<_, _>>()?;
    let last = raw.len().saturating_sub(1);
    for (i, text) in raw.iter().enumerate() {
        if text.is_empty() {
            continue;
        }
        match parse(text) {
            Some(line) => lines.push(line),
            // A killed worker's torn line is followed by the drill's K line.
            None if i == last
                || matches!(
                    raw.get(i + 1).map(|l| parse(l)),
                    Some(Some(Line::Killed(_)))
                ) => {}
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: line {}: {text:?}", path.display(), i + 1),
                ));
            }
        }
    }
    Ok(WorkerRecord { worker, lines })
}

/// Reads every `*.rec` file in `dir`.
pub fn read_dir(dir: &Path) -> io::Result<Vec<WorkerRecord>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "rec"));
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_a_torn_last_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("drill-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w1.rec");
        let _ = std::fs::remove_file(&path);
        let w = RecordWriter::open(&path).unwrap();
        w.start("k1-0", "k1", 0).unwrap();
        w.end("k1-0", "k1", 0).unwrap();
        w.exit(3, 2, 1, 0).unwrap();
        w.line("S\tk1-1\tk1".into()).unwrap();
        let r = read(&path).unwrap();
        assert_eq!(r.worker, "w1");
        assert_eq!(r.lines.len(), 3, "{:?}", r.lines);
        assert!(matches!(&r.lines[0], Line::Start(m) if m.id == "k1-0" && m.seq == 0));
        assert!(matches!(
            &r.lines[2],
            Line::Exit {
                received: 3,
                acked: 2,
                abandoned: 1,
                ..
            }
        ));
        assert!(r.stopped_at().is_some());
        w.killed(7).unwrap();
        let r = read(&path).unwrap();
        assert_eq!(r.lines.len(), 4, "the torn line is skipped: {:?}", r.lines);
        assert_eq!(r.stopped_at(), Some(7));
        w.start("k1-2", "k1", 2).unwrap();
        w.line("garbage\n".into()).unwrap();
        w.start("k1-3", "k1", 3).unwrap();
        assert!(read(&path).is_err(), "a bad line in the middle is an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
