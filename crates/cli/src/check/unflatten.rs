//! Puts `metadata:` and `spec:` back into walkthrough YAML printed without them, line by line
//! so values, quotes and comments stay as written. Pure.
//!
//! ```text
//! apiVersion: aadpodidentity.k8s.io/v1        apiVersion: aadpodidentity.k8s.io/v1
//! kind: AzureIdentity                         kind: AzureIdentity
//! name: myidentity                     ──►    metadata:
//! type: 0                                       name: myidentity
//! ResourceID: /subscriptions/…                spec:
//! ClientID: 0c8d…                               type: 0
//!                                               ResourceID: /subscriptions/…
//!                                               ClientID: 0c8d…
//! ```
//! The nested fields may also keep some indentation (`kind: AzureIdentity` then `  name: x`),
//! which YAML rejects ("mapping values are not allowed in this context").

use super::fields::{Kind, is_metadata_key};

/// A repaired document and what had to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unflattened {
    pub kind: String,
    pub text: String,
    /// Keys moved under `metadata:`, in document order.
    pub to_metadata: Vec<String>,
    /// Keys moved under `spec:`, in document order.
    pub to_spec: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Top,
    Metadata,
    Spec,
}

/// Lines sorted into sections; a field whose value is a block remembers its indentation so
/// more-indented lines follow it.
#[derive(Default)]
struct Sorter {
    top: Vec<String>,
    metadata: Vec<String>,
    spec: Vec<String>,
    to_metadata: Vec<String>,
    to_spec: Vec<String>,
    /// The section the document itself opened with a `metadata:` or `spec:` line.
    opened: Option<Section>,
    block: Option<(Section, usize)>,
}

/// `None` unless the document is one of our kinds with fields outside their section.
pub fn unflatten(doc: &str) -> Option<Unflattened> {
    let kind_name = doc.lines().find_map(|l| l.trim().strip_prefix("kind:").map(|v| unquote(v.trim())))?;
    let kind = Kind::parse(&kind_name)?;
    let mut s = Sorter::default();
    for line in doc.lines().filter(|l| !l.trim().is_empty()) {
        s.line(line, kind);
    }
    if s.to_metadata.is_empty() && s.to_spec.is_empty() {
        return None;
    }
    let mut text = String::new();
    for l in &s.top {
        text.push_str(l);
        text.push('\n');
    }
    for (header, lines) in [("metadata:", &s.metadata), ("spec:", &s.spec)] {
        text.push_str(header);
        text.push('\n');
        for l in lines {
            text.push_str("  ");
            text.push_str(l);
            text.push('\n');
        }
    }
    Some(Unflattened { kind: kind_name, text, to_metadata: s.to_metadata, to_spec: s.to_spec })
}

impl Sorter {
    fn line(&mut self, line: &str, kind: Kind) {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        if let Some((section, field_indent)) = self.block
            && (indent > field_indent || (indent == field_indent && t.starts_with("- ")))
        {
            let relative = " ".repeat(indent.saturating_sub(field_indent).max(2));
            self.push(section, format!("{relative}{t}"));
            return;
        }
        self.block = None;
        if t.starts_with('#') {
            let section = self.opened.unwrap_or(Section::Top);
            self.push(section, t.to_owned());
            return;
        }
        let Some((key, value)) = split_key(t) else {
            self.push(Section::Spec, t.to_owned());
            return;
        };
        let section = match key {
            "apiVersion" | "kind" => Section::Top,
            "metadata" | "spec" if value.is_empty() => {
                self.opened = Some(if key == "metadata" { Section::Metadata } else { Section::Spec });
                return;
            }
            k if is_metadata_key(k) => Section::Metadata,
            _ => Section::Spec,
        };
        let moved = section != Section::Top && self.opened != Some(section);
        match section {
            Section::Metadata if moved => self.to_metadata.push(key.to_owned()),
            Section::Spec if moved && kind.is_spec_key(key) => self.to_spec.push(key.to_owned()),
            Section::Top | Section::Metadata | Section::Spec => {}
        }
        if section != Section::Top && (value.is_empty() || value.starts_with('|') || value.starts_with('>')) {
            self.block = Some((section, indent));
        }
        self.push(section, t.to_owned());
    }

    fn push(&mut self, section: Section, line: String) {
        match section {
            Section::Top => self.top.push(line),
            Section::Metadata => self.metadata.push(line),
            Section::Spec => self.spec.push(line),
        }
    }
}

/// `key: value` (or `key:`) with a plain key.
fn split_key(t: &str) -> Option<(&str, &str)> {
    let (key, rest) = t.split_once(':')?;
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    (plain && (rest.is_empty() || rest.starts_with(' '))).then(|| (key, rest.trim()))
}

fn unquote(v: &str) -> String {
    v.trim_matches(|c| c == '"' || c == '\'').to_owned()
}
