//! The block syntax keepalived and corosync share: `keyword args...`
//! lines, `{ ... }` blocks, `#` (and keepalived's `!`) comments, quoted
//! strings; corosync's `key: value` reads as keyword `key`. Bounded in
//! depth and size.

use super::ImportError;

/// Deepest nesting of blocks read.
const MAX_DEPTH: usize = 16;
/// Most items read from one file.
const MAX_ITEMS: usize = 20_000;

/// One `keyword args... [{ block }]` of a file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Item {
    /// The keyword (a trailing `:` dropped, as corosync writes keys).
    pub(crate) key: String,
    /// The words after it.
    pub(crate) args: Vec<String>,
    /// Its line (1-based).
    pub(crate) line: usize,
    /// Its block's items.
    pub(crate) block: Vec<Item>,
}

impl Item {
    pub(crate) fn all(&self) -> String {
        std::iter::once(self.key.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn arg(&self) -> Option<&str> {
        self.args.first().map(String::as_str)
    }

    /// Its block's items called `key`.
    pub(crate) fn all_named<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.block.iter().filter(move |i| i.key == key)
    }

    pub(crate) fn child(&self, key: &str) -> Option<&Item> {
        self.block.iter().find(|i| i.key == key)
    }
}

/// A line's words: quoted strings kept whole, braces apart, comments
/// (`!` or `#` outside quotes) dropped.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '!' | '#' if !quoted => break,
            '{' | '}' if !quoted => {
                if !cur.is_empty() || was_quoted {
                    out.push(std::mem::take(&mut cur));
                }
                was_quoted = false;
                out.push(c.to_string());
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() || was_quoted {
                    out.push(std::mem::take(&mut cur));
                }
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() || was_quoted {
        out.push(cur);
    }
    out
}

/// The file as a tree of items.
pub(crate) fn parse(file: &str, text: &str) -> Result<Vec<Item>, ImportError> {
    let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
    let mut count = 0usize;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut cur: Option<Item> = None;
        for w in words(line) {
            match w.as_str() {
                "{" => {
                    if stack.len() > MAX_DEPTH {
                        return Err(ImportError::Input {
                            source_at: format!("{file}:{n}"),
                            what: format!("blocks nested deeper than {MAX_DEPTH}"),
                            fix: "check the braces".into(),
                        });
                    }
                    // The block belongs to this line's item, or to the
                    // previous line's (`{` alone on a line).
                    let owner = match cur.take() {
                        Some(it) => it,
                        None => stack.last_mut().and_then(Vec::pop).ok_or_else(|| {
                            ImportError::Input {
                                source_at: format!("{file}:{n}"),
                                what: "a block with no keyword before it".into(),
                                fix: "write `keyword {`".into(),
                            }
                        })?,
                    };
                    if let Some(level) = stack.last_mut() {
                        level.push(owner);
                    }
                    stack.push(Vec::new());
                }
                "}" => {
                    if let Some(it) = cur.take() {
                        if let Some(level) = stack.last_mut() {
                            level.push(it);
                        }
                    }
                    if stack.len() < 2 {
                        return Err(ImportError::Input {
                            source_at: format!("{file}:{n}"),
                            what: "a `}` that closes nothing".into(),
                            fix: "check the braces".into(),
                        });
                    }
                    let block = stack.pop().unwrap_or_default();
                    if let Some(owner) = stack.last_mut().and_then(|l| l.last_mut()) {
                        owner.block = block;
                    }
                }
                _ => {
                    count += 1;
                    if count > MAX_ITEMS {
                        return Err(ImportError::Input {
                            source_at: file.into(),
                            what: format!("more than {MAX_ITEMS} items"),
                            fix: "this is not a keepalived.conf".into(),
                        });
                    }
                    match &mut cur {
                        Some(it) => it.args.push(w),
                        None => {
                            let key = match w.strip_suffix(':') {
                                Some(k) if !k.is_empty() => k.to_string(),
                                _ => w,
                            };
                            cur = Some(Item {
                                key,
                                line: n,
                                ..Item::default()
                            })
                        }
                    }
                }
            }
        }
        if let Some(it) = cur.take() {
            if let Some(level) = stack.last_mut() {
                level.push(it);
            }
        }
    }
    if stack.len() != 1 {
        return Err(ImportError::Input {
            source_at: file.into(),
            what: format!("{} block(s) left open", stack.len() - 1),
            fix: "check the braces".into(),
        });
    }
    Ok(stack.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quotes_and_drop_comments() {
        assert_eq!(
            words(r#"  script "killall -0 sshd"   # cheaper than pidof"#),
            ["script", "killall -0 sshd"]
        );
        assert_eq!(
            words("vrrp_instance VI_1 {"),
            ["vrrp_instance", "VI_1", "{"]
        );
        assert_eq!(words("! a comment"), Vec::<String>::new());
        assert_eq!(words("group { A B }"), ["group", "{", "A", "B", "}"]);
    }

    #[test]
    fn blocks_nest_and_bad_braces_are_named() {
        let items = parse("f", "a 1 {\n  b {\n    10.0.0.1 dev eth0\n  }\n}\nc\n").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].block[0].block[0].key, "10.0.0.1");
        assert_eq!(items[0].block[0].block[0].args, ["dev", "eth0"]);
        let e = parse("f", "a {\n").unwrap_err().to_string();
        assert!(e.contains("left open"), "{e}");
        let e = parse("f", "}\n").unwrap_err().to_string();
        assert!(e.contains("closes nothing"), "{e}");
        let deep = "a {\n".repeat(40);
        assert!(parse("f", &deep)
            .unwrap_err()
            .to_string()
            .contains("deeper"));
    }

    #[test]
    fn corosync_keys_lose_their_colon() {
        let items = parse(
            "c",
            "nodelist {\n  node {\n    ring0_addr: 10.0.0.1\n    name: n1\n  }\n}\n",
        )
        .unwrap();
        let node = &items[0].block[0];
        assert_eq!(
            node.child("ring0_addr").and_then(Item::arg),
            Some("10.0.0.1")
        );
        assert_eq!(node.child("name").and_then(Item::arg), Some("n1"));
    }
}
