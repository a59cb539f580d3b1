//! Fault injection and call counters, shared by all three faces.
//!
//! A [`Fault`] matches a face and optionally one operation (see the operation names in the crate docs)
//! and optionally one target (a VM/VMSS name for ARM, a node name for IMDS); it applies to the next
//! `count` matching calls (or forever). Counters record every call that reached a face (including the
//! ones a fault answered) and, for ARM, reads and writes per VM/VMSS.
//! This module holds plain data; it never sleeps or does I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One of the simulator's faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Face {
    /// Azure Resource Manager.
    Arm,
    /// Azure AD (login.microsoftonline.com).
    Aad,
    /// The per-node Instance Metadata Service.
    Imds,
}

impl Face {
    /// The lowercase name used in counter keys and on the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Face::Arm => "arm",
            Face::Aad => "aad",
            Face::Imds => "imds",
        }
    }
}

/// What an injected fault does to a matching call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "type")]
pub enum FaultKind {
    /// Delay the answer, then answer normally.
    Latency {
        /// How long to wait, e.g. `"1500ms"` on the admin API.
        #[serde(with = "humantime_serde_compat")]
        delay: Duration,
    },
    /// Answer 429 with a `Retry-After` header (whole seconds, at least 1) and the face's error body.
    Throttle {
        /// The `Retry-After` value.
        #[serde(with = "humantime_serde_compat")]
        retry_after: Duration,
    },
    /// Answer this status code (e.g. 500, 503) with the face's error body.
    Status {
        /// The HTTP status code.
        code: u16,
    },
    /// Close the connection without answering, as a face that is down.
    Down,
    /// ARM writes only: accept the write (200 + `Azure-AsyncOperation`) but end the operation `Failed`
    /// with this error, leaving the identities unchanged. Other operations answer 500 with it.
    FailOperation {
        /// `error.code` of the failed operation, e.g. `InternalExecutionError`.
        code: String,
        /// `error.message`.
        message: String,
    },
}

impl FaultKind {
    /// A latency fault.
    pub fn latency(delay: Duration) -> Self {
        FaultKind::Latency { delay }
    }
    /// A throttling fault.
    pub fn throttle(retry_after: Duration) -> Self {
        FaultKind::Throttle { retry_after }
    }
    /// A status-code fault.
    pub fn status(code: u16) -> Self {
        FaultKind::Status { code }
    }
}

/// A fault to inject: which calls it matches, what it does, how many times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// The face it applies to.
    pub face: Face,
    /// The operation it applies to (`vmss_update`, `token`, `imds_token`, ...); `None` means every operation.
    #[serde(default)]
    pub operation: Option<String>,
    /// The VM/VMSS name (ARM) or node name (IMDS: VM name, or `<vmss>_<instance>`) it applies to; `None` means all.
    #[serde(default)]
    pub target: Option<String>,
    /// What it does.
    pub kind: FaultKind,
    /// How many matching calls it affects; `None` means forever (until cleared).
    #[serde(default)]
    pub count: Option<u32>,
}

impl Fault {
    /// A fault for every operation of `face`, forever.
    pub fn new(face: Face, kind: FaultKind) -> Self {
        Self { face, operation: None, target: None, kind, count: None }
    }
    /// Restricts the fault to one operation.
    pub fn operation(mut self, op: impl Into<String>) -> Self {
        self.operation = Some(op.into());
        self
    }
    /// Restricts the fault to one VM/VMSS (ARM) or node (IMDS).
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
    /// Limits the fault to the next `n` matching calls.
    pub fn times(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }

    fn matches(&self, face: Face, op: &str, target: Option<&str>) -> bool {
        self.face == face
            && self.operation.as_deref().is_none_or(|o| o.eq_ignore_ascii_case(op))
            && self.target.as_deref().is_none_or(|t| target.is_some_and(|x| x.eq_ignore_ascii_case(t)))
    }
}

/// The faults in force, in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    faults: Vec<Fault>,
}

impl FaultTable {
    pub(crate) fn add(&mut self, fault: Fault) {
        if fault.count != Some(0) {
            self.faults.push(fault);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    pub(crate) fn list(&self) -> Vec<Fault> {
        self.faults.clone()
    }

    /// Takes the faults that apply to this call: every matching latency fault (their delays add up)
    /// and the first matching answering fault. Each taken fault uses up one of its count.
    pub(crate) fn take(&mut self, face: Face, op: &str, target: Option<&str>) -> (Duration, Option<FaultKind>) {
        let mut delay = Duration::ZERO;
        let mut answer = None;
        for fault in self.faults.iter_mut().filter(|f| f.matches(face, op, target)) {
            match &fault.kind {
                FaultKind::Latency { delay: d } => delay += *d,
                kind @ (FaultKind::Throttle { .. }
                | FaultKind::Status { .. }
                | FaultKind::Down
                | FaultKind::FailOperation { .. }) => {
                    if answer.is_some() {
                        continue;
                    }
                    answer = Some(kind.clone());
                }
            }
            if let Some(n) = fault.count.as_mut() {
                *n = n.saturating_sub(1);
            }
        }
        self.faults.retain(|f| f.count != Some(0));
        (delay, answer)
    }
}

/// Reads and writes that reached one VM or VMSS through ARM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCounts {
    /// GETs that got past authentication and fault injection.
    pub reads: u64,
    /// PUTs and PATCHes that got past authentication and fault injection (whatever their outcome).
    pub writes: u64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Calls per `"<face>/<operation>"`, e.g. `"arm/vmss_update"`, `"aad/token"`, `"imds/imds_token"`;
    /// counted when a call reaches the face, before faults or validation.
    pub calls: BTreeMap<String, u64>,
    /// Per `"vm/<name>"` or `"vmss/<name>"` (name lowercased).
    pub targets: BTreeMap<String, TargetCounts>,
    /// Authenticated ARM calls per `"<appid>/<operation>"`: the token's `appid` tells apart two
    /// clients with their own credentials (e.g. two MIC replicas).
    #[serde(default)]
    pub callers: BTreeMap<String, u64>,
    /// The most calls of one `"<face>/<operation>"` in progress at the same time (faces that track
    /// load: IMDS tokens), so tests can check a client's concurrency limit.
    #[serde(default)]
    pub peak_concurrent: BTreeMap<String, u64>,
    /// The most calls of one `"<face>/<operation>"` that started within any one second (same faces).
    #[serde(default)]
    pub peak_per_second: BTreeMap<String, u64>,
}

impl Counters {
    /// Calls of one operation of one face.
    pub fn calls(&self, face: Face, op: &str) -> u64 {
        self.calls.get(&format!("{}/{op}", face.as_str())).copied().unwrap_or(0)
    }
    /// All calls to one face.
    pub fn face_total(&self, face: Face) -> u64 {
        let prefix = format!("{}/", face.as_str());
        self.calls.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| v).sum()
    }
    /// Authenticated ARM calls of one operation by the client whose token carries `appid`.
    pub fn caller_calls(&self, appid: &str, op: &str) -> u64 {
        self.callers.get(&format!("{appid}/{op}")).copied().unwrap_or(0)
    }
    /// Authenticated ARM writes (operations ending in `_update` or `_create_or_update`) by `appid`.
    pub fn caller_writes(&self, appid: &str) -> u64 {
        let prefix = format!("{appid}/");
        self.callers
            .iter()
            .filter(|(k, _)| k.strip_prefix(&prefix).is_some_and(|op| op.ends_with("_update")))
            .map(|(_, v)| v)
            .sum()
    }
    /// ARM writes (PUT/PATCH) to one VM (`kind` = `"vm"`) or VMSS (`"vmss"`).
    pub fn arm_writes(&self, kind: &str, name: &str) -> u64 {
        self.target(kind, name).writes
    }
    /// ARM reads (GET) of one VM or VMSS.
    pub fn arm_reads(&self, kind: &str, name: &str) -> u64 {
        self.target(kind, name).reads
    }
    /// ARM writes to all VMs and VMSS together.
    pub fn arm_writes_total(&self) -> u64 {
        self.targets.values().map(|t| t.writes).sum()
    }
    /// The most calls of one operation in progress at once (see [`Counters::peak_concurrent`]).
    pub fn peak_concurrent(&self, face: Face, op: &str) -> u64 {
        self.peak_concurrent.get(&format!("{}/{op}", face.as_str())).copied().unwrap_or(0)
    }
    /// The most calls of one operation started within one second (see [`Counters::peak_per_second`]).
    pub fn peak_per_second(&self, face: Face, op: &str) -> u64 {
        self.peak_per_second.get(&format!("{}/{op}", face.as_str())).copied().unwrap_or(0)
    }
    fn target(&self, kind: &str, name: &str) -> TargetCounts {
        self.targets.get(&target_key(kind, name)).copied().unwrap_or_default()
    }
}

/// Calls in progress and recent starts per `"<face>/<operation>"`: what the load peaks are
/// computed from. Time is passed in; the window holds at most one second of starts.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: BTreeMap<String, u64>,
    recent: BTreeMap<String, VecDeque<Instant>>,
}

impl Load {
    /// A call started at `now`; updates the peaks in `counters`.
    pub(crate) fn begin(&mut self, key: &str, now: Instant, counters: &mut Counters) {
        let in_flight = self.in_flight.entry(key.to_owned()).or_default();
        *in_flight += 1;
        let peak = counters.peak_concurrent.entry(key.to_owned()).or_default();
        *peak = (*peak).max(*in_flight);
        let recent = self.recent.entry(key.to_owned()).or_default();
        recent.push_back(now);
        while recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
            recent.pop_front();
        }
        let peak = counters.peak_per_second.entry(key.to_owned()).or_default();
        *peak = (*peak).max(u64::try_from(recent.len()).unwrap_or(u64::MAX));
    }

    /// A call ended.
    pub(crate) fn end(&mut self, key: &str) {
        if let Some(n) = self.in_flight.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    /// Forgets recent starts (the peaks were reset); calls in progress stay counted.
    pub(crate) fn reset_window(&mut self) {
        self.recent.clear();
    }
}

pub(crate) fn target_key(kind: &str, name: &str) -> String {
    format!("{}/{}", kind.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// `Duration` as a humantime string on the wire (`"1500ms"`, `"2s"`), also accepting integer milliseconds.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(t) => humantime::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_fault_is_used_up_and_then_gone() {
        let mut t = FaultTable::default();
        t.add(Fault::new(Face::Arm, FaultKind::status(503)).operation("vmss_update").times(2));
        assert_eq!(t.take(Face::Arm, "vmss_get", None).1, None);
        assert_eq!(t.take(Face::Arm, "vmss_update", Some("ss")).1, Some(FaultKind::status(503)));
        assert_eq!(t.take(Face::Arm, "VMSS_UPDATE", None).1, Some(FaultKind::status(503)));
        assert_eq!(t.take(Face::Arm, "vmss_update", None).1, None);
        assert!(t.list().is_empty());
    }

    #[test]
    fn latencies_add_up_and_a_targeted_fault_spares_other_targets() {
        let mut t = FaultTable::default();
        t.add(Fault::new(Face::Imds, FaultKind::latency(Duration::from_millis(5))));
        t.add(Fault::new(Face::Imds, FaultKind::latency(Duration::from_millis(7))));
        t.add(Fault::new(Face::Imds, FaultKind::Down).target("node-a"));
        assert_eq!(t.take(Face::Imds, "imds_token", Some("node-b")), (Duration::from_millis(12), None));
        assert_eq!(
            t.take(Face::Imds, "imds_token", Some("NODE-A")),
            (Duration::from_millis(12), Some(FaultKind::Down))
        );
    }

    #[test]
    fn load_peaks_count_overlapping_calls_and_starts_within_one_second() {
        let (mut load, mut counters) = (Load::default(), Counters::default());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        load.begin("imds/imds_token", ms(0), &mut counters);
        load.begin("imds/imds_token", ms(100), &mut counters);
        load.end("imds/imds_token");
        load.begin("imds/imds_token", ms(900), &mut counters);
        assert_eq!(counters.peak_concurrent(Face::Imds, "imds_token"), 2);
        assert_eq!(counters.peak_per_second(Face::Imds, "imds_token"), 3);
        load.end("imds/imds_token");
        load.end("imds/imds_token");
        for t in [1000, 1050, 1100] {
            load.begin("imds/imds_token", ms(t), &mut counters);
            load.end("imds/imds_token");
        }
        assert_eq!(counters.peak_per_second(Face::Imds, "imds_token"), 4, "100, 900, 1000 and 1050 within one second");
        assert_eq!(counters.peak_concurrent(Face::Imds, "imds_token"), 2);
    }

    #[test]
    fn faults_read_from_admin_json() {
        let f: Fault = serde_json::from_str(
            r#"{"face":"arm","operation":"vm_update","kind":{"type":"throttle","retryAfter":"3s"},"count":1}"#,
        )
        .unwrap();
        assert_eq!(f.kind, FaultKind::throttle(Duration::from_secs(3)));
        let g: Fault = serde_json::from_str(r#"{"face":"aad","kind":{"type":"latency","delay":250}}"#).unwrap();
        assert_eq!(g.kind, FaultKind::latency(Duration::from_millis(250)));
    }
}
