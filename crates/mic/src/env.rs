//! The environment MIC reads (`MIC_POD_NAMESPACE`, `FORCENAMESPACED`, the cloud config
//! fallback), passed in as a value so tests can run several MICs in one process.

use std::collections::BTreeMap;

/// Environment variables by name.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment.
    pub fn from_process() -> Self {
        Self { vars: std::env::vars().collect() }
    }

    /// A variable's value; unset and empty are the same.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}
