//! Where the agent's, the witness's and the guard's log lines go, and in
//! which shape: text lines on standard error or in a file, one JSON
//! object per line, or systemd's journal with priorities (the native
//! protocol, so `journalctl -p warning` and `-o json` work).
//!
//! Every line has a level, the program (`tandem` or `tandem-guard`), the
//! node, the event's kind and its text. The text is what status and the
//! event journal say; secrets were scrubbed before it gets here
//! ([`crate::event::scrubbed`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer as _;

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// The journal when systemd runs the program with its output going
    /// to the journal (`JOURNAL_STREAM` set and the journal's socket
    /// there), text otherwise.
    Auto,
    /// `2026-11-30 12:00:00.123 WARN  tandem[n1]: text`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`
    /// (`tandem` or `tandem-guard`), `node`, `kind`, `message`.
    Json,
    /// systemd's journal: `MESSAGE`, `PRIORITY` from the level,
    /// `SYSLOG_IDENTIFIER`, and the fields `TANDEM_NODE`, `TANDEM_KIND`.
    Journald,
}

impl LogFormat {
    /// The word for it on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        }
    }
}

/// How severe a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something failed that the operator must look at (a fence that did
    /// not confirm, a lease file that cannot be written, a damaged record).
    Error,
    /// Something failed or degraded and the cluster acts on it (a node
    /// dead, a link down, a resource's failure).
    Warn,
    /// What the cluster did and why.
    Info,
}

impl Severity {
    /// The word for it on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warn => "warn",
            Severity::Info => "info",
        }
    }

    fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        match self {
            Severity::Error => tracing_subscriber::filter::LevelFilter::ERROR,
            Severity::Warn => tracing_subscriber::filter::LevelFilter::WARN,
            Severity::Info => tracing_subscriber::filter::LevelFilter::INFO,
        }
    }
}

/// Which program writes the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The agent or the witness (`tandem`).
    Agent,
    /// The lease guard (`tandem-guard`).
    Guard,
}

/// What `--log-format`, `--log-file` and `--log-level` chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The shape of lines.
    pub format: LogFormat,
    /// Append to this file instead of standard error (text and JSON).
    pub file: Option<PathBuf>,
    /// The least severe level written.
    pub level: Severity,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            format: LogFormat::Auto,
            file: None,
            level: Severity::Info,
        }
    }
}

impl LogOptions {
    /// The same choice as command-line arguments (the agent hands them
    /// to the guard it starts, so both log alike).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--log-format".into(),
            self.format.as_str().into(),
            "--log-level".into(),
            self.level.as_str().into(),
        ];
        if let Some(f) = &self.file {
            a.push("--log-file".into());
            a.push(f.into());
        }
        a
    }
}

/// The options [`init`] installed, for [`options`].
static INSTALLED: OnceLock<LogOptions> = OnceLock::new();

/// What [`init`] installed (the defaults before it ran).
pub fn options() -> LogOptions {
    INSTALLED.get().cloned().unwrap_or_default()
}

/// Whether systemd connected standard error to the journal: it sets
/// `JOURNAL_STREAM` to the stream's `device:inode`.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the log's destination and shape for this process (`program`
/// names it in the journal). Called once, first thing; later calls change
/// nothing. `auto` falls back to text on stderr when the journal does not
/// answer; an explicit `journald` that does not is an error.
pub fn init(opts: &LogOptions, program: Program) -> Result<()> {
    let format = match opts.format {
        LogFormat::Auto if opts.file.is_none() && stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    if format == LogFormat::Journald && opts.format == LogFormat::Auto {
        if let Err(e) = init(
            &LogOptions {
                format: LogFormat::Journald,
                ..opts.clone()
            },
            program,
        ) {
            init(
                &LogOptions {
                    format: LogFormat::Text,
                    ..opts.clone()
                },
                program,
            )?;
            emit(
                program,
                Severity::Warn,
                "",
                "logging",
                &format!("the journal did not answer ({e:#}): logging text to stderr"),
            );
        }
        return Ok(());
    }
    if format == LogFormat::Journald && opts.file.is_some() {
        anyhow::bail!("--log-file goes with --log-format text or json, not journald");
    }
    let writer = match &opts.file {
        None => Sink::Stderr,
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .with_context(|| {
                    format!(
                        "opening the log file {} (its directory must exist and be writable)",
                        path.display()
                    )
                })?;
            Sink::File(std::sync::Arc::new(Mutex::new(f)))
        }
    };
    let subscriber = build(format, writer, opts.level, program)?;
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = INSTALLED.set(LogOptions {
            format,
            ..opts.clone()
        });
    }
    Ok(())
}

/// The subscriber writing `format` lines at `level` and above to `sink`
/// (`Auto` reads as text: [`init`] resolves it).
fn build(
    format: LogFormat,
    sink: Sink,
    level: Severity,
    program: Program,
) -> Result<impl Subscriber + Send + Sync> {
    let layer: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        match format {
            LogFormat::Journald => Box::new(
                tracing_journald::layer()
                    .context("connecting to systemd's journal (is systemd-journald running?); use --log-format text")?
                    .with_syslog_identifier(
                        match program {
                            Program::Agent => "tandem",
                            Program::Guard => "tandem-guard",
                        }
                        .into(),
                    )
                    .with_field_prefix(Some("TANDEM".into())),
            ),
            LogFormat::Json => Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_timer(Utc)
                    .with_writer(sink),
            ),
            LogFormat::Text | LogFormat::Auto => Box::new(
                tracing_subscriber::fmt::layer()
                    .event_format(TextLine)
                    .with_writer(sink),
            ),
        };
    Ok(tracing_subscriber::registry().with(layer.with_filter(level.filter())))
}

/// Writes one line: `text` of kind `kind` on `node`, by `program`.
pub fn emit(program: Program, severity: Severity, node: &str, kind: &str, text: &str) {
    // Targets must be literals: one arm per program and level.
    macro_rules! line {
        ($target:literal, $level:ident) => {
            tracing::$level!(target: $target, node, kind, "{text}")
        };
    }
    match (program, severity) {
        (Program::Agent, Severity::Error) => line!("tandem", error),
        (Program::Agent, Severity::Warn) => line!("tandem", warn),
        (Program::Agent, Severity::Info) => line!("tandem", info),
        (Program::Guard, Severity::Error) => line!("tandem-guard", error),
        (Program::Guard, Severity::Warn) => line!("tandem-guard", warn),
        (Program::Guard, Severity::Info) => line!("tandem-guard", info),
    }
}

/// Standard error, or a file shared by every line.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(std::sync::Arc<Mutex<std::fs::File>>),
}

/// One line's writer: the whole line is written at once (a file's lock
/// is held for it), so lines never interleave.
enum SinkWriter<'a> {
    Stderr(std::io::StderrLock<'a>),
    File(std::sync::MutexGuard<'a, std::fs::File>),
}

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SinkWriter::Stderr(s) => s.write(buf),
            SinkWriter::File(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SinkWriter::Stderr(s) => s.flush(),
            SinkWriter::File(f) => f.flush(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Box<dyn std::io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Sink::Stderr => Box::new(SinkWriter::Stderr(std::io::stderr().lock())),
            Sink::File(f) => match f.lock() {
                Ok(g) => Box::new(SinkWriter::File(g)),
                // A writer panicked mid-line: the file is still usable.
                Err(poisoned) => Box::new(SinkWriter::File(poisoned.into_inner())),
            },
        }
    }
}

/// UTC timestamps with milliseconds, as everywhere else in Tandem.
struct Utc;

impl FormatTime for Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{}", crate::clock::format_utc(crate::clock::unix_ms()))
    }
}

/// `2026-11-30 12:00:00.123 WARN  tandem[n1]: text`: the line the agent
/// always wrote, with its level.
struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        writeln!(
            w,
            "{} {:<5} {}[{}]: {}",
            crate::clock::format_utc(crate::clock::unix_ms()),
            event.metadata().level().as_str(),
            event.metadata().target(),
            f.node,
            f.message
        )
    }
}

/// The fields a text line shows.
#[derive(Default)]
struct Fields {
    message: String,
    node: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "node" => self.node = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "node" => self.node = format!("{value:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `emit` writes in `format` at `level` (and above).
    fn lines(format: LogFormat, level: Severity) -> Vec<String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        let sink = Sink::File(std::sync::Arc::new(Mutex::new(file.reopen().unwrap())));
        let sub = build(format, sink, level, Program::Agent).unwrap();
        tracing::subscriber::with_default(sub, || {
            emit(
                Program::Agent,
                Severity::Warn,
                "n1",
                "node_dead",
                "n2 dead: all links silent",
            );
            emit(
                Program::Guard,
                Severity::Info,
                "n1",
                "guard",
                "lease renewed",
            );
        });
        std::fs::read_to_string(file.path())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_text_line_has_time_level_program_node_and_text() {
        let l = lines(LogFormat::Text, Severity::Info);
        assert_eq!(l.len(), 2, "{l:?}");
        // "2026-11-30 12:00:00.123 " then the rest.
        assert_eq!(&l[0][24..], "WARN  tandem[n1]: n2 dead: all links silent");
        assert_eq!(&l[1][24..], "INFO  tandem-guard[n1]: lease renewed");
    }

    #[test]
    fn a_json_line_is_one_object_with_the_fields_named() {
        let l = lines(LogFormat::Json, Severity::Info);
        assert_eq!(l.len(), 2, "{l:?}");
        let v: serde_json::Value = serde_json::from_str(&l[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "tandem");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["kind"], "node_dead");
        assert_eq!(v["message"], "n2 dead: all links silent");
        assert!(v["timestamp"].as_str().unwrap().len() >= 23);
    }

    #[test]
    fn lines_below_the_level_are_left_out() {
        let l = lines(LogFormat::Text, Severity::Warn);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].contains("WARN  tandem[n1]"));
    }

    #[test]
    fn the_options_go_to_the_guard_as_arguments() {
        let o = LogOptions {
            format: LogFormat::Json,
            file: Some("/var/log/tandem.log".into()),
            level: Severity::Warn,
        };
        let a: Vec<String> = o
            .to_args()
            .iter()
            .map(|s| s.to_string_lossy().into())
            .collect();
        assert_eq!(
            a,
            [
                "--log-format",
                "json",
                "--log-level",
                "warn",
                "--log-file",
                "/var/log/tandem.log"
            ]
        );
    }
}
