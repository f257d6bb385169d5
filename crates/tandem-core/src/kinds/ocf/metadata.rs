//! What an OCF agent says of itself (`meta-data`): its parameters (which
//! are required, their defaults) and its actions (advertised timeouts,
//! monitor interval and depth). Parsed here; the agent's shell runs the
//! agent to get the text. [`check_params`] is the one rule that compares
//! a resource's parameters with them.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Longest meta-data this reads (Debian's largest agents write ~40 KiB).
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Most parameters or actions read from one agent.
const MAX_ITEMS: usize = 512;
/// An advertised timeout shorter than this is taken as this (an agent
/// that says `timeout="0"` does not mean "no time at all").
pub const MIN_ADVERTISED_TIMEOUT_MS: u64 = 1_000;
/// An advertised timeout longer than this is taken as this: a typo in an
/// agent's meta-data must not leave a stop bounded only by days (a longer
/// limit can still be written as `timeout_ms`).
pub const MAX_ADVERTISED_TIMEOUT_MS: u64 = 3_600_000;

/// One parameter the agent takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Its name (`OCF_RESKEY_<name>`).
    pub name: String,
    /// The agent cannot run without it.
    pub required: bool,
    /// Its default, as the agent writes it.
    pub default: Option<String>,
}

/// One action the agent implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionMeta {
    /// `start`, `monitor`...
    pub name: String,
    /// The timeout it advertises.
    pub timeout_ms: Option<u64>,
    /// Its interval (a monitor's).
    pub interval_ms: Option<u64>,
    /// Its depth (`OCF_CHECK_LEVEL`).
    pub depth: Option<u32>,
}

/// An agent's meta-data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// The name the agent gives itself.
    pub name: String,
    /// Its parameters, in its order.
    pub params: Vec<Param>,
    /// Its actions, in its order (a monitor may be listed once per depth).
    pub actions: Vec<ActionMeta>,
}

/// Why meta-data could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    /// Not well-formed XML.
    #[error("the meta-data is not well-formed XML at byte {at}: {why}")]
    Xml {
        /// Where.
        at: u64,
        /// What the parser said.
        why: String,
    },
    /// No `<resource-agent>` element.
    #[error("the meta-data has no <resource-agent> element")]
    NotAnAgent,
    /// Larger than [`MAX_METADATA_BYTES`].
    #[error("the meta-data is larger than {MAX_METADATA_BYTES} bytes")]
    TooLarge,
}

impl Metadata {
    /// Whether the agent implements `action` (`validate-all`, `promote`...).
    pub fn has_action(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a.name == action)
    }

    /// The first listed `action`.
    pub fn action(&self, action: &str) -> Option<&ActionMeta> {
        self.actions.iter().find(|a| a.name == action)
    }

    /// The `timeout_ms` a resource of this agent needs: the longest
    /// timeout it advertises for an action Tandem calls (start, stop,
    /// monitor at any depth), since one limit covers them all; at least
    /// [`MIN_ADVERTISED_TIMEOUT_MS`] and at most
    /// [`MAX_ADVERTISED_TIMEOUT_MS`]. None when it advertises none.
    /// `config validate` warns when a resource's limit is shorter.
    pub fn advertised_timeout_ms(&self) -> Option<u64> {
        self.actions
            .iter()
            .filter(|a| matches!(a.name.as_str(), "start" | "stop" | "monitor"))
            .filter_map(|a| a.timeout_ms)
            .max()
            .map(|t| t.clamp(MIN_ADVERTISED_TIMEOUT_MS, MAX_ADVERTISED_TIMEOUT_MS))
    }

    /// Parses an agent's `meta-data` output.
    pub fn parse(xml: &str) -> Result<Metadata, MetadataError> {
        if xml.len() > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge);
        }
        let mut r = Reader::from_str(xml);
        let mut md = Metadata::default();
        let mut seen_agent = false;
        let mut closed = false;
        // The parameter whose <content> may follow.
        let mut open_param: Option<usize> = None;
        loop {
            let ev = r.read_event().map_err(|e| MetadataError::Xml {
                at: r.buffer_position(),
                why: e.to_string(),
            })?;
            match ev {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => {
                    let attrs = attributes(&e);
                    match e.name().as_ref() {
                        b"resource-agent" => {
                            seen_agent = true;
                            md.name = attrs.get("name").cloned().unwrap_or_default();
                        }
                        b"parameter" if md.params.len() < MAX_ITEMS => {
                            md.params.push(Param {
                                name: attrs.get("name").cloned().unwrap_or_default(),
                                required: attrs.get("required").is_some_and(|v| v == "1"),
                                default: None,
                            });
                            open_param = Some(md.params.len() - 1);
                        }
                        b"content" => {
                            if let (Some(i), Some(d)) = (open_param, attrs.get("default")) {
                                md.params[i].default = Some(d.clone());
                            }
                        }
                        b"action" if md.actions.len() < MAX_ITEMS => {
                            md.actions.push(ActionMeta {
                                name: attrs.get("name").cloned().unwrap_or_default(),
                                timeout_ms: attrs.get("timeout").and_then(|t| duration_ms(t)),
                                interval_ms: attrs.get("interval").and_then(|t| duration_ms(t)),
                                depth: attrs.get("depth").and_then(|d| d.trim().parse().ok()),
                            });
                        }
                        _ => {}
                    }
                }
                Event::End(e) if e.name().as_ref() == b"parameter" => open_param = None,
                Event::End(e) if e.name().as_ref() == b"resource-agent" => closed = true,
                _ => {}
            }
        }
        if !seen_agent {
            return Err(MetadataError::NotAnAgent);
        }
        if !closed {
            // Cut short: what is missing may be the parameters.
            return Err(MetadataError::Xml {
                at: r.buffer_position(),
                why: "it ends before </resource-agent>".into(),
            });
        }
        md.params.retain(|p| !p.name.is_empty());
        md.actions.retain(|a| !a.name.is_empty());
        Ok(md)
    }
}

/// An element's attributes, unescaped (malformed ones are skipped: the
/// meta-data is advice, and the agent's own checks run anyway).
pub(crate) fn attributes(e: &BytesStart<'_>) -> BTreeMap<String, String> {
    e.attributes()
        .flatten()
        .filter_map(|a| {
            let k = String::from_utf8(a.key.as_ref().to_vec()).ok()?;
            let v = a.unescape_value().ok()?.into_owned();
            Some((k, v))
        })
        .collect()
}

/// A duration as agents write them: `20s`, `20`, `100ms`, `2min`, `1h`.
pub fn duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let per = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1_000,
        "ms" | "msec" => 1,
        "m" | "min" | "mins" => 60_000,
        "h" | "hr" | "hrs" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(per)
}

/// One thing wrong with a resource's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamProblem {
    /// A required parameter is not given.
    Missing {
        /// Its name.
        name: String,
    },
    /// A parameter the agent does not take (a typo, most often).
    Unknown {
        /// As written.
        name: String,
        /// The agent's closest parameter, if one is close.
        closest: Option<String>,
    },
}

impl std::fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamProblem::Missing { name } => write!(
                f,
                "the agent requires parameter `{name}`: add it to `params`"
            ),
            ParamProblem::Unknown {
                name,
                closest: Some(c),
            } => write!(
                f,
                "the agent takes no parameter `{name}`: did you mean `{c}`?"
            ),
            ParamProblem::Unknown {
                name,
                closest: None,
            } => write!(
                f,
                "the agent takes no parameter `{name}`: its meta-data lists what it takes"
            ),
        }
    }
}

/// What is wrong with `params` for an agent with this meta-data: required
/// parameters missing and unknown ones (with the closest known name).
pub fn check_params(md: &Metadata, params: &BTreeMap<String, String>) -> Vec<ParamProblem> {
    let mut out = Vec::new();
    for p in md.params.iter().filter(|p| p.required) {
        if !params.contains_key(&p.name) {
            out.push(ParamProblem::Missing {
                name: p.name.clone(),
            });
        }
    }
    let known: Vec<String> = md.params.iter().map(|p| p.name.clone()).collect();
    for name in params.keys() {
        if !known.contains(name) {
            out.push(ParamProblem::Unknown {
                name: name.clone(),
                closest: crate::config::help::closest(name, &known),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Debian's IPaddr2 meta-data, abridged.
    const IPADDR2: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="IPaddr2" version="1.0">
<version>1.0</version>
<parameters>
<parameter name="ip" unique="1" required="1">
<longdesc lang="en">The IPv4 address &amp; more</longdesc>
<content type="string" default="" />
</parameter>
<parameter name="nic" unique="0">
<content type="string"/>
</parameter>
<parameter name="cidr_netmask">
<content type="string" default=""/>
</parameter>
</parameters>
<actions>
<action name="start"   timeout="20s" />
<action name="monitor" depth="0"  timeout="20s" interval="10s" />
<action name="validate-all"  timeout="20s" />
</actions>
</resource-agent>
"#;

    #[test]
    fn reads_parameters_and_actions() {
        let md = Metadata::parse(IPADDR2).unwrap();
        assert_eq!(md.name, "IPaddr2");
        let names: Vec<&str> = md.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ip", "nic", "cidr_netmask"]);
        assert!(md.params[0].required && !md.params[1].required);
        let mon = md.action("monitor").unwrap();
        assert_eq!(
            (mon.timeout_ms, mon.interval_ms, mon.depth),
            (Some(20_000), Some(10_000), Some(0))
        );
        assert!(md.has_action("validate-all") && !md.has_action("promote"));
    }

    #[test]
    fn the_timeout_needed_is_the_longest_advertised_for_start_stop_or_monitor() {
        let md = |actions: &str| {
            Metadata::parse(&format!(
                "<resource-agent name=\"x\"><actions>{actions}</actions></resource-agent>"
            ))
            .unwrap()
        };
        // apache: stop 60 s is the longest; validate-all is not called
        // by the cluster and does not count.
        let apache = md(r#"<action name="start" timeout="40s"/><action name="stop" timeout="60s"/>
            <action name="monitor" timeout="20s" interval="10s"/><action name="validate-all" timeout="90s"/>"#);
        assert_eq!(apache.advertised_timeout_ms(), Some(60_000));
        // A deeper monitor may advertise more.
        let deep = md(r#"<action name="start" timeout="20s"/><action name="monitor" depth="0" timeout="20s"/>
            <action name="monitor" depth="10" timeout="2min"/>"#);
        assert_eq!(deep.advertised_timeout_ms(), Some(120_000));
        assert_eq!(md(r#"<action name="meta-data" timeout="5s"/>"#).advertised_timeout_ms(), None);
        assert_eq!(md(r#"<action name="stop" timeout="0"/>"#).advertised_timeout_ms(), Some(MIN_ADVERTISED_TIMEOUT_MS));
        assert_eq!(md(r#"<action name="stop" timeout="48h"/>"#).advertised_timeout_ms(), Some(MAX_ADVERTISED_TIMEOUT_MS));
    }

    #[test]
    fn required_and_unknown_parameters_are_found_with_a_did_you_mean() {
        let md = Metadata::parse(IPADDR2).unwrap();
        let params: BTreeMap<String, String> = [("cidr_netmsk", "24"), ("colour", "red")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let problems = check_params(&md, &params);
        assert_eq!(
            problems,
            vec![
                ParamProblem::Missing { name: "ip".into() },
                ParamProblem::Unknown {
                    name: "cidr_netmsk".into(),
                    closest: Some("cidr_netmask".into())
                },
                ParamProblem::Unknown {
                    name: "colour".into(),
                    closest: None
                },
            ]
        );
        assert!(problems[1].to_string().contains("did you mean `cidr_netmask`"));
    }

    #[test]
    fn durations_as_agents_write_them() {
        for (t, ms) in [("20s", 20_000), ("20", 20_000), ("100ms", 100), ("2min", 120_000), ("1h", 3_600_000)] {
            assert_eq!(duration_ms(t), Some(ms), "{t}");
        }
        assert_eq!(duration_ms("soon"), None);
        assert_eq!(duration_ms(""), None);
    }

    #[test]
    fn what_is_not_meta_data_is_refused() {
        assert_eq!(Metadata::parse("<html/>"), Err(MetadataError::NotAnAgent));
        assert!(matches!(
            Metadata::parse("<resource-agent><parameters></oops>"),
            Err(MetadataError::Xml { .. })
        ));
        // Cut short (a truncated read): refused, not half-read.
        let cut = &IPADDR2[..IPADDR2.find("<parameter name=\"nic\"").unwrap()];
        assert!(matches!(Metadata::parse(cut), Err(MetadataError::Xml { .. })));
    }
}
