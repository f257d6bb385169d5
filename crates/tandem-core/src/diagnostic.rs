//! Located diagnostics (errors and warnings) and their plain-text rendering.
//!
//! A diagnostic points at a byte range of the source it came from. Rendering
//! turns that into `file:line:column`, shows the offending line with a caret
//! under the range, and ends with a `help:` line that says what to write instead.

use std::fmt::Write as _;
use std::ops::Range;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The input is refused.
    Error,
    /// The input is accepted, but a setting is risky.
    Warning,
}

/// One problem found in an input, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Byte range in the source; `None` when the problem has no single place.
    pub span: Option<Range<usize>>,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            span,
            message: message.into(),
            help: None,
        }
    }

    /// A warning at `span`.
    pub fn warning(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            span,
            message: message.into(),
            help: None,
        }
    }

    /// Adds the "what to do instead" line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A 1-based line and column (in characters) for a byte offset into `source`.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders diagnostics for the file labelled `origin` whose text is `source`.
///
/// Output, one block per diagnostic:
///
/// ```text
/// error: cluster.toml:14:20: group `web` prefers unknown node `n3`
///    |
/// 14 | preferred = ["n1", "n3"]
///    |                    ^^^^
///    = help: the nodes are n1, n2; add a [[node]] named "n3" or fix the name
/// ```
pub fn render(origin: &str, source: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        let label = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &d.span {
            Some(span) => {
                let (line, column) = line_column(source, span.start);
                let _ = writeln!(out, "{label}: {origin}:{line}:{column}: {}", d.message);
                render_snippet(&mut out, source, span.clone(), line, column);
            }
            None => {
                let _ = writeln!(out, "{label}: {origin}: {}", d.message);
            }
        }
        if let Some(help) = &d.help {
            let _ = writeln!(out, "   = help: {help}");
        }
    }
    out
}

fn render_snippet(out: &mut String, source: &str, span: Range<usize>, line: usize, column: usize) {
    let Some(text) = source.lines().nth(line - 1) else {
        return;
    };
    let gutter = line.to_string().len().max(2);
    let start = floor_char_boundary(source, span.start.min(source.len()));
    let end = floor_char_boundary(source, span.end.min(source.len())).max(start);
    // Underline at most to the end of the first line of the span.
    let width = source[start..end]
        .lines()
        .next()
        .map_or(1, |l| l.chars().count().max(1));
    let width = width.min(text.chars().count().saturating_sub(column - 1).max(1));
    let text = mask_secrets(text);
    let _ = writeln!(out, "{:gutter$} |", "");
    let _ = writeln!(out, "{line:>gutter$} | {text}");
    let _ = writeln!(
        out,
        "{:gutter$} | {}{}",
        "",
        " ".repeat(column - 1),
        "^".repeat(width)
    );
}

/// Masks quoted values on a source line with as many `*`, so a diagnostic
/// never prints a secret and its caret still lines up: the value after any
/// secret-looking key ([`crate::fence::is_secret`]), and inside an inline
/// `options = { ... }` table (a fence device's), every value whose key is
/// not known to be safe to show ([`crate::fence::is_shown`]). Quoted keys
/// (`"api_token" = "..."`) count as keys.
fn mask_secrets(line: &str) -> String {
    let mut out: Vec<char> = line.chars().collect();
    let lower: Vec<char> = line.to_ascii_lowercase().chars().collect();
    let is_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let skip_spaces = |mut j: usize| {
        while j < lower.len() && (lower[j] == ' ' || lower[j] == '\t') {
            j += 1;
        }
        j
    };
    let mut in_options = false;
    let mut i = 0;
    while i < lower.len() {
        if in_options && lower[i] == '}' {
            in_options = false;
            i += 1;
            continue;
        }
        if !is_key(lower[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < lower.len() && is_key(lower[i]) {
            i += 1;
        }
        let key: String = lower[start..i].iter().collect();
        let mut j = i;
        // The closing quote of a quoted key.
        if start > 0
            && j < lower.len()
            && (lower[j] == '"' || lower[j] == '\'')
            && lower[start - 1] == lower[j]
        {
            j += 1;
        }
        j = skip_spaces(j);
        if j >= lower.len() || lower[j] != '=' {
            continue;
        }
        j = skip_spaces(j + 1);
        if key == "options" && j < lower.len() && lower[j] == '{' {
            in_options = true;
            i = j + 1;
            continue;
        }
        let hide = crate::fence::is_secret(&key) || (in_options && !crate::fence::is_shown(&key));
        if hide && j < lower.len() && (lower[j] == '"' || lower[j] == '\'') {
            let quote = lower[j];
            j += 1;
            while j < lower.len() && lower[j] != quote {
                out[j] = '*';
                j += 1;
            }
        }
        i = j.max(i);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_inline_password_printed_in_a_diagnostic_snippet() {
        // The agent logged its configuration warnings, the source line and
        // with it the fence device's password.
        let src = "options = { ip = \"10.0.0.1\", password = \"hunter2\" }\n";
        let d = Diagnostic::warning(Some(31..39), "an inline password");
        let text = render("c.toml", src, &[d]);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("password = \"*******\"") && text.contains("10.0.0.1"),
            "{text}"
        );
        assert_eq!(
            mask_secrets("passwd='x y' other = \"z\""),
            "passwd='***' other = \"z\""
        );
    }

    /// Issue 15, defect 9: `api_token` and `apikey` values were printed in
    /// the `validate` snippet (masking went by a short list of names, and
    /// missed quoted keys and tabs).
    #[test]
    fn every_fence_option_value_but_safe_ones_is_masked() {
        assert_eq!(
            mask_secrets("options = { ip = \"10.0.0.1\", api_token = \"abc\", \"apikey\"\t= 'k' }"),
            "options = { ip = \"10.0.0.1\", api_token = \"***\", \"apikey\"\t= '*' }"
        );
        assert_eq!(mask_secrets("name = \"web\""), "name = \"web\"");
        assert_eq!(mask_secrets("token = \"xyz\""), "token = \"***\"");
    }

    #[test]
    fn line_column_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 9), (2, 4));
        assert_eq!(line_column(src, 999), (3, 1));
    }

    #[test]
    fn line_column_handles_multibyte_text() {
        let src = "name = \"é\" x";
        // byte 11 is after the closing quote; é is two bytes but one column.
        assert_eq!(line_column(src, 11), (1, 11));
        // An offset inside a multibyte char does not panic.
        assert_eq!(line_column(src, 9), (1, 9));
    }

    #[test]
    fn render_shows_location_caret_and_help() {
        let src = "x = 1\npreferred = [\"n1\", \"n3\"]\n";
        let d = Diagnostic::error(Some(25..29), "unknown node `n3`").with_help("add it");
        let out = render("c.toml", src, &[d]);
        assert_eq!(
            out,
            "error: c.toml:2:20: unknown node `n3`\n   |\n 2 | preferred = [\"n1\", \"n3\"]\n   |                    ^^^^\n   = help: add it\n"
        );
    }
}
