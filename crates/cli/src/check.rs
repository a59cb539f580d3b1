//! `aadpodid check FILE|DIR`: validates AzureIdentity, AzureIdentityBinding and
//! AzurePodIdentityException YAML offline, with the checks MIC applies
//! (`aadpodid_api::view`), the schema's field names in both casings, and a repair for the
//! walkthrough YAML that old blog posts print without its `metadata:`/`spec:` nesting.
//!
//! Pure but for reading the files ([`check_paths`]); [`check_text`] does the work.

mod fields;
mod unflatten;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use aadpodid_api::view::{IdentityType, validate_binding, validate_identity};
use aadpodid_api::{AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};
use serde_json::Value;

pub use fields::Kind;
pub use unflatten::unflatten;

/// How bad a finding is: errors make `check` exit 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Note,
}

/// One thing `check` found about a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn error(message: impl Into<String>) -> Self {
        Self { severity: Severity::Error, message: message.into() }
    }
    fn warning(message: impl Into<String>) -> Self {
        Self { severity: Severity::Warning, message: message.into() }
    }
    fn note(message: impl Into<String>) -> Self {
        Self { severity: Severity::Note, message: message.into() }
    }
}

/// The result for one YAML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocReport {
    /// `file` or `file#2` for the second document of a file.
    pub source: String,
    /// `Kind/name` when known.
    pub object: Option<String>,
    pub findings: Vec<Finding>,
    /// The document as it should have been written, when `check` could repair it.
    pub corrected: Option<String>,
}

impl DocReport {
    /// True when any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Why files could not be read at all (not a finding about their contents).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{0}: no .yaml, .yml or .json files")]
    Empty(PathBuf),
}

/// Checks every `.yaml`, `.yml` and `.json` file under `paths` (`-` is standard input).
pub fn check_paths(paths: &[PathBuf]) -> Result<Vec<DocReport>, CheckError> {
    let mut texts = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let text = std::io::read_to_string(std::io::stdin()).map_err(|e| CheckError::Read(path.clone(), e))?;
            texts.push(("<stdin>".to_owned(), text));
            continue;
        }
        let files = manifest_files(path)?;
        if files.is_empty() {
            return Err(CheckError::Empty(path.clone()));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| CheckError::Read(file.clone(), e))?;
            texts.push((file.display().to_string(), text));
        }
    }
    let mut reports: Vec<DocReport> = texts.iter().flat_map(|(source, text)| check_text(source, text)).collect();
    cross_check(&mut reports, &texts);
    Ok(reports)
}

fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, CheckError> {
    let meta = std::fs::metadata(path).map_err(|e| CheckError::Read(path.to_path_buf(), e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| CheckError::Read(path.to_path_buf(), e))?;
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(manifest_files(&p)?);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Splits a multi-document YAML stream at `---` lines.
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") || line.starts_with("---\t") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.into_iter().filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))).collect()
}

/// Checks every document of one file.
pub fn check_text(source: &str, text: &str) -> Vec<DocReport> {
    let docs = split_documents(text);
    let many = docs.len() > 1;
    docs.iter()
        .enumerate()
        .map(|(i, doc)| {
            let source = if many { format!("{source}#{}", i + 1) } else { source.to_owned() };
            check_document(source, doc)
        })
        .collect()
}

fn check_document(source: String, doc: &str) -> DocReport {
    let parsed = serde_saphyr::from_str::<Value>(doc);
    let flat = match &parsed {
        Ok(value) => is_flat(value),
        Err(_) => true,
    };
    if flat && let Some(fixed) = unflatten(doc) {
        return repaired(source, &fixed, parsed.err().map(|e| e.to_string()));
    }
    match parsed {
        Ok(value) => {
            let (object, findings) = validate(&value);
            DocReport { source, object, findings, corrected: None }
        }
        Err(e) => DocReport {
            source,
            object: None,
            findings: vec![Finding::error(format!("not valid YAML: {e}"))],
            corrected: None,
        },
    }
}

/// A document of our kinds with fields at the top that belong under `metadata:` or `spec:`.
fn is_flat(value: &Value) -> bool {
    let Some(kind) = value.get("kind").and_then(Value::as_str).and_then(Kind::parse) else { return false };
    value.as_object().is_some_and(|m| m.keys().any(|k| fields::is_metadata_key(k) || kind.is_spec_key(k)))
}

fn repaired(source: String, fixed: &unflatten::Unflattened, yaml_error: Option<String>) -> DocReport {
    let mut parts = Vec::new();
    if !fixed.to_metadata.is_empty() {
        parts.push(format!("{} must be under `metadata:`", quoted(&fixed.to_metadata)));
    }
    if !fixed.to_spec.is_empty() {
        parts.push(format!("{} under `spec:`", quoted(&fixed.to_spec)));
    }
    let mut message = format!(
        "{} is missing its `metadata:`/`spec:` nesting: {} (the walkthrough YAML as some posts print it)",
        fixed.kind,
        parts.join(", and ")
    );
    if let Some(e) = yaml_error {
        message.push_str(&format!("; kubectl reports this as a YAML error ({e})"));
    }
    let mut findings = vec![Finding::error(message)];
    let mut object = None;
    if let Ok(value) = serde_saphyr::from_str::<Value>(&fixed.text) {
        let (o, more) = validate(&value);
        object = o;
        findings.extend(more.into_iter().map(|f| Finding { message: format!("corrected: {}", f.message), ..f }));
    }
    DocReport { source, object, findings, corrected: Some(fixed.text.clone()) }
}

fn quoted(keys: &[String]) -> String {
    keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

/// Schema, field names and MIC's checks for one parsed document.
fn validate(value: &Value) -> (Option<String>, Vec<Finding>) {
    let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let object = (!kind_name.is_empty()).then(|| format!("{kind_name}/{name}"));
    let Some(kind) = Kind::parse(kind_name) else {
        let note = if kind_name == "AzureAssignedIdentity" {
            "AzureAssignedIdentity is written by MIC, not by hand; not checked"
        } else {
            "not an aad-pod-identity kind; not checked"
        };
        return (object, vec![Finding::note(note)]);
    };
    let mut findings = fields::check_shape(value, kind);
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return (object, findings);
    }
    findings.extend(match kind {
        Kind::Identity => check_identity(value),
        Kind::Binding => check_binding(value),
        Kind::Exception => check_exception(value),
    });
    (object, findings)
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Finding> {
    serde_json::from_value(value.clone()).map_err(|e| Finding::error(format!("does not decode: {e}")))
}

fn check_identity(value: &Value) -> Vec<Finding> {
    let id: AzureIdentity = match typed(value) {
        Ok(id) => id,
        Err(f) => return vec![f],
    };
    let mut out = Vec::new();
    let kind = match validate_identity(&id) {
        Ok(kind) => kind,
        Err(e) => return vec![Finding::error(e.to_string())],
    };
    match id.spec.client_id.as_deref().filter(|c| !c.trim().is_empty()) {
        None => out.push(Finding::error("spec.clientID is empty: NMI cannot ask for this identity's tokens")),
        Some(c) if !looks_like_guid(c) => {
            out.push(Finding::warning(format!("spec.clientID {c:?} does not look like a client ID (a GUID)")))
        }
        Some(_) => {}
    }
    if kind != IdentityType::UserAssignedMsi {
        if id.spec.tenant_id.as_deref().unwrap_or_default().is_empty() {
            out.push(Finding::error("spec.tenantID is empty: a service principal needs its tenant"));
        }
        if id.spec.client_password.as_ref().and_then(|p| p.name.as_deref()).unwrap_or_default().is_empty() {
            out.push(Finding::error("spec.clientPassword.name is empty: a service principal needs its Secret"));
        }
    }
    out
}

fn looks_like_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn check_binding(value: &Value) -> Vec<Finding> {
    let binding: AzureIdentityBinding = match typed(value) {
        Ok(b) => b,
        Err(f) => return vec![f],
    };
    match validate_binding(&binding) {
        Err(e) => vec![Finding::error(e.to_string())],
        Ok((selector, _)) => match fields::label_value_problem(selector) {
            Some(p) => vec![Finding::error(format!(
                "spec.selector {selector:?} cannot be a label value ({p}): no pod can carry it"
            ))],
            None => Vec::new(),
        },
    }
}

fn check_exception(value: &Value) -> Vec<Finding> {
    match typed::<AzurePodIdentityException>(value) {
        Err(f) => vec![f],
        Ok(e) if e.spec.pod_labels.as_ref().is_none_or(|l| l.is_empty()) => {
            vec![Finding::warning("spec.podLabels is empty: the exception matches no pod")]
        }
        Ok(_) => Vec::new(),
    }
}

/// Notes bindings whose identity is in none of the files checked (it may exist in the cluster).
fn cross_check(reports: &mut [DocReport], texts: &[(String, String)]) {
    let values: Vec<Value> = texts
        .iter()
        .flat_map(|(_, t)| split_documents(t))
        .filter_map(|d| serde_saphyr::from_str::<Value>(&d).ok())
        .collect();
    let identities: BTreeSet<&str> = values
        .iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("AzureIdentity"))
        .filter_map(|v| v.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    if identities.is_empty() {
        return;
    }
    for report in reports.iter_mut() {
        let Some(name) = report.object.as_deref().and_then(|o| o.strip_prefix("AzureIdentityBinding/")) else {
            continue;
        };
        let wanted = values.iter().find(|v| {
            v.get("kind").and_then(Value::as_str) == Some("AzureIdentityBinding")
                && v.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        });
        let target = wanted.and_then(binding_target);
        if let Some(target) = target.filter(|t| !identities.contains(t.as_str())) {
            let hint = crate::similar::suggest(&target, identities.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_default();
            report.findings.push(Finding::warning(format!(
                "spec.azureIdentity {target:?} is not among the AzureIdentities checked{hint}; it must exist in the binding's namespace"
            )));
        }
    }
}

fn binding_target(v: &Value) -> Option<String> {
    let b: AzureIdentityBinding = serde_json::from_value(v.clone()).ok()?;
    b.spec.azure_identity
}

impl fmt::Display for DocReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = self.object.as_deref().map(|o| format!(" ({o})")).unwrap_or_default();
        if self.findings.iter().all(|x| x.severity == Severity::Note) && self.corrected.is_none() {
            writeln!(f, "{}{object}: ok", self.source)?;
        }
        for finding in &self.findings {
            let tag = match finding.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Note => "note",
            };
            writeln!(f, "{}{object}: {tag}: {}", self.source, finding.message)?;
        }
        if let Some(text) = &self.corrected {
            writeln!(f, "Corrected document (save it and `kubectl apply -f` it):\n---\n{text}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
