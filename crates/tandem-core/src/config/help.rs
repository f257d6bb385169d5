//! Help for the operator: serde's and the checks' findings as located
//! diagnostics with a fix (plain words for types, the nearest name for a
//! typo). Validation and each kind's check use it; it uses only
//! [`crate::diagnostic`].

use std::collections::BTreeSet;
use std::ops::Range;

use serde_spanned::Spanned;

use crate::diagnostic::Diagnostic;

/// Turns a TOML/serde error into a located diagnostic with a fix.
pub(crate) fn from_toml_error(e: &toml::de::Error) -> Diagnostic {
    serde_diagnostic(e.span(), e.message())
}

/// A serde message at `at` as a diagnostic with a fix, in the operator's
/// words (also for a kind's field of the wrong type).
pub(crate) fn serde_diagnostic(at: Option<Range<usize>>, message: &str) -> Diagnostic {
    let msg = plain_types(&message.trim().replace('\n', "; "));
    let help = help_for_serde_message(&msg);
    let d = Diagnostic::error(at, msg);
    match help {
        Some(h) => d.with_help(h),
        None => d,
    }
}

/// Replaces Rust type names in serde messages with words an operator knows.
fn plain_types(msg: &str) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list in [ ]"),
        ("expected a map", "expected a table in { }"),
    ];
    NAMES.iter().fold(msg.to_string(), |m, (from, to)| {
        if m.ends_with(from) {
            format!("{}{to}", &m[..m.len() - from.len()])
        } else {
            m
        }
    })
}

fn help_for_serde_message(msg: &str) -> Option<String> {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`')?;
        let choices = backticked(expected);
        return Some(match closest(name, &choices) {
            Some(best) => format!(
                "did you mean `{best}`? The keys allowed here are: {}",
                choices.join(", ")
            ),
            None => format!(
                "remove `{name}`; the keys allowed here are: {}",
                choices.join(", ")
            ),
        });
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (name, expected) = rest.split_once('`')?;
        let choices = backticked(expected);
        return Some(match closest(name, &choices) {
            Some(best) => format!(
                "did you mean \"{best}\"? Write one of: {}",
                choices.join(", ")
            ),
            None => format!("write one of: {}", choices.join(", ")),
        });
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next()?;
        return Some(format!(
            "add `{name} = ...` to this table (see docs/CONFIG.md)"
        ));
    }
    if msg.starts_with("invalid type") {
        let expected = msg.split("expected ").nth(1).unwrap_or("another type");
        return Some(format!(
            "write {expected} here (strings in double quotes, numbers without quotes, lists in [ ])"
        ));
    }
    if msg.contains("duplicate key") {
        return Some("each key may appear once per table; remove one of them".into());
    }
    if msg.contains("is not an address with prefix") {
        return Some("write it like \"10.0.0.100/24\" or \"fd00::10/64\"".into());
    }
    if msg.contains("is not a size") {
        return Some(
            "write a number with a unit: \"512MiB\", \"4GiB\", \"1TiB\" (or plain bytes)".into(),
        );
    }
    if msg.contains("invalid IP address") || msg.contains("invalid socket address") {
        return Some("write an address like \"10.0.0.1\" (for sockets \"10.0.0.1:5405\" or \"[fd00::1]:5405\")".into());
    }
    if msg.contains("invalid value") {
        return Some("write a value of the expected kind and range".into());
    }
    Some("fix the TOML syntax here: strings need double quotes, tables are [name], lists of tables [[name]], one key = value per line".into())
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The candidate within edit distance 2 of `word`, if any.
pub(crate) fn closest(word: &str, choices: &[String]) -> Option<String> {
    choices
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `context` names `name`, which is not among the `what`s (`known`): an
/// error with the nearest name or the list; None when it is known.
pub(crate) fn unknown_ref(
    what: &str,
    name: &Spanned<String>,
    known: &BTreeSet<String>,
    context: &str,
) -> Option<Diagnostic> {
    if known.contains(name.get_ref()) {
        return None;
    }
    let list = known.iter().cloned().collect::<Vec<_>>();
    let help = match closest(name.get_ref(), &list) {
        Some(best) => format!(
            "did you mean `{best}`? The {what}s are: {}",
            list.join(", ")
        ),
        None if list.is_empty() => {
            format!("no {what} is defined; add one or remove this reference")
        }
        None => format!(
            "the {what}s are: {}; define `{}` or fix the name",
            list.join(", "),
            name.get_ref()
        ),
    };
    Some(
        Diagnostic::error(
            Some(name.span()),
            format!("{context} names unknown {what} `{}`", name.get_ref()),
        )
        .with_help(help),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("deadtime", "deadtime_ms"), 3);
        assert_eq!(edit_distance("hearbeat_ms", "heartbeat_ms"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
