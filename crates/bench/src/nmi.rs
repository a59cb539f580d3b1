//! NMI benchmark: token requests from real pod namespaces through the node's DNAT path, to our
//! `nmi`, the original v1.8.17 `nmi` and the floor (a fixed-answer server on the same path).
//!
//! ```text
//! Env (apiserver, simulator IMDS at 169.254.169.254:80 in the node, Pod objects, assignments)
//!   per run, in rotating order: ours | original | floor
//!     -> start (NMI installs its DNAT; for the floor we install the same rule)
//!     -> phases: cold, first per identity, fixed rates, saturation (load::run_in a pod)
//!     -> /proc usage -> kill -> remove the chain
//!   -> rows of medians over the runs
//! ```

mod env;
mod floor;
mod load;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper::body::Bytes;

use crate::report::{Better, Original, Row, Section, Target};
use crate::{Config, Size, procstat};
use env::Env;
use load::{Outcome, Pace, Plan};

/// Identities on the node; the "all identities" pod has every one of them.
const IDENTITIES: usize = 20;
/// What SDKs ask for by default (Azure Resource Manager).
const RESOURCE: &str = "https://management.azure.com/";
/// The resource of the readiness check, so no measured request finds it cached.
const CHECK_RESOURCE: &str = "https://vault.azure.net/";

/// Counts and durations of one size.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Pod objects on the node (two of them send the load).
    pods: usize,
    /// Sequential cold requests (each a resource not asked for before).
    cold: usize,
    /// The two fixed rates (requests per second).
    rates: [f64; 2],
    /// Length of each fixed-rate and saturation phase.
    phase: Duration,
    /// Keep-alive connections at fixed rates.
    rate_connections: usize,
    /// Keep-alive connections at saturation.
    saturation_connections: usize,
}

impl Sizes {
    fn of(size: Size) -> Self {
        match size {
            Size::Tiny => Self {
                pods: 10,
                cold: 20,
                rates: [20.0, 100.0],
                phase: Duration::from_secs(1),
                rate_connections: 4,
                saturation_connections: 8,
            },
            Size::Full => Self {
                pods: 110,
                cold: 200,
                rates: [50.0, 200.0],
                phase: Duration::from_secs(5),
                rate_connections: 4,
                saturation_connections: 16,
            },
        }
    }
}

/// What one implementation did in one run.
#[derive(Debug, Clone, Default)]
struct Phases {
    /// One identity, a new resource per request (token cache miss for ours).
    cold: Outcome,
    /// The first request of each identity after start, from the all-identities pod.
    first: Outcome,
    /// One identity at the lower and the higher fixed rate.
    low: Outcome,
    high: Outcome,
    /// Every identity in rotation at the higher fixed rate.
    high_all: Outcome,
    /// Saturation, one identity and every identity in rotation.
    sat_one: Outcome,
    sat_all: Outcome,
    /// CPU seconds over the three fixed-rate phases (the same requests for everyone).
    fixed_cpu_s: f64,
    /// CPU milliseconds per 1000 answered requests at saturation.
    sat_cpu_ms_per_k: f64,
    /// Peak resident memory (VmHWM) at the end of the run, MiB.
    peak_rss_mib: f64,
    /// Resident memory at the end of the run: anonymous (heap, stacks) and file-backed (code), MiB.
    end_anon_mib: f64,
    end_file_mib: f64,
    /// Resident memory once Active, before any request, MiB.
    idle_rss_mib: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Ours,
    Original,
    Floor,
}

/// Everything measured, per implementation, one entry per run.
#[derive(Default)]
struct Results {
    ours: Vec<Phases>,
    original: Vec<Phases>,
    floor: Vec<Phases>,
    /// Why the original has no figures, when it has none.
    original_unavailable: Option<String>,
}

/// Our NMI's request limits, lifted for the benchmark: the load comes from one or two pods far
/// above a real pod's rate (per-pod limit), and the simulator's IMDS has no 20-per-second limit
/// for the node budget to respect (the original has neither limit).
const OURS_UNLIMITED: &[&str] = &["--pod-requests-per-second=0", "--imds-max-per-second=1000000"];

/// Runs the NMI benchmark: ours, the original and the floor server, alternating, `config.runs`
/// times, on one node with the size's pods.
pub async fn run(config: &Config) -> anyhow::Result<Section> {
    let sizes = Sizes::of(config.size);
    let env = Env::start(sizes.pods, IDENTITIES).await.context("starting the NMI benchmark's cluster and node")?;
    let mut results = Results::default();
    if config.original.is_none() {
        results.original_unavailable = Some("skipped with --no-original".to_owned());
    }
    let mut floor_body: Option<Bytes> = None;
    for run in 0..config.runs {
        let order = [Which::Ours, Which::Original, Which::Floor];
        for k in 0..order.len() {
            let which = order[(k + run) % order.len()];
            match which {
                Which::Ours => {
                    let binary = config.ours.join("nmi");
                    let tag = format!("ours-{run}");
                    let (phases, body) = measure_nmi(&env, &binary, &tag, OURS_UNLIMITED, &sizes).await?;
                    floor_body.get_or_insert(body);
                    results.ours.push(phases);
                }
                Which::Original => {
                    let (Some(dir), None) = (&config.original, &results.original_unavailable) else { continue };
                    match measure_nmi(&env, &dir.join("nmi"), &format!("original-{run}"), &[], &sizes).await {
                        Ok((phases, _)) => results.original.push(phases),
                        Err(e) => results.original_unavailable = Some(format!("{e:#}")),
                    }
                }
                Which::Floor => {
                    let body = floor_body.clone().context("the floor serves our NMI's answer, measured first")?;
                    results.floor.push(measure_floor(&env, body, &sizes).await?);
                }
            }
        }
    }
    Ok(section(&sizes, &results))
}

/// Starts an NMI, checks it serves a token, measures every phase and kills it. Returns the
/// phases and the body of its check answer (a real token answer, which the floor then serves).
async fn measure_nmi(
    env: &Env,
    binary: &std::path::Path,
    tag: &str,
    extra_args: &[&str],
    sizes: &Sizes,
) -> anyhow::Result<(Phases, Bytes)> {
    let nmi = env.start_nmi(binary, tag, extra_args).await?;
    let idle_rss_mib = procstat::read(nmi.pid).map_or(f64::NAN, |u| u.rss as f64 / (1024.0 * 1024.0));
    let result = async {
        let (status, body) = load::get_once(env.one.clone(), token_path(CHECK_RESOURCE, None)).await?;
        if status != 200 || !body.contains("access_token") {
            bail!("a token request through the DNAT path answered {status}: {body}; log tail:\n{}", nmi.log_tail());
        }
        let phases = phases(env, sizes, Some(nmi.pid), tag).await?;
        Ok((Phases { idle_rss_mib, ..phases }, Bytes::from(body)))
    }
    .await;
    env.stop_nmi(nmi).await;
    result
}

async fn measure_floor(env: &Env, body: Bytes, sizes: &Sizes) -> anyhow::Result<Phases> {
    floor::install_dnat(&env.node)?;
    let result = match floor::Floor::start(&env.node, body) {
        Ok(server) => {
            let result = phases(env, sizes, None, "floor").await;
            drop(server);
            result
        }
        Err(e) => Err(e),
    };
    floor::remove_dnat(&env.node);
    result
}

/// The measured phases against whatever answers on the DNAT path; `pid` is the NMI process
/// whose CPU and memory are read.
async fn phases(env: &Env, sizes: &Sizes, pid: Option<u32>, tag: &str) -> anyhow::Result<Phases> {
    let one = Arc::new(vec![token_path(RESOURCE, None)]);
    let all: Arc<Vec<String>> = Arc::new(env.ids.iter().map(|id| token_path(RESOURCE, Some(&id.client_id))).collect());
    let cold: Arc<Vec<String>> = Arc::new(
        (0..sizes.cold).map(|i| token_path(&format!("https://cold-{tag}-{i}.bench.invalid/"), None)).collect(),
    );
    let count = |paths: &Arc<Vec<String>>| Plan {
        connections: 1,
        pace: Pace::Saturate,
        duration: Duration::from_secs(120),
        requests: Some(paths.len()),
        paths: paths.clone(),
    };
    let timed = |paths: &Arc<Vec<String>>, pace: Pace, connections: usize| Plan {
        connections,
        pace,
        duration: sizes.phase,
        requests: None,
        paths: paths.clone(),
    };
    let mut p = Phases {
        cold: load::run_in(env.one.clone(), count(&cold)).await?,
        first: load::run_in(env.all.clone(), count(&all)).await?,
        ..Phases::default()
    };
    let cpu0 = cpu_seconds(pid);
    p.low = load::run_in(env.one.clone(), timed(&one, Pace::Rate(sizes.rates[0]), sizes.rate_connections)).await?;
    p.high = load::run_in(env.one.clone(), timed(&one, Pace::Rate(sizes.rates[1]), sizes.rate_connections)).await?;
    p.high_all = load::run_in(env.all.clone(), timed(&all, Pace::Rate(sizes.rates[1]), sizes.rate_connections)).await?;
    let cpu1 = cpu_seconds(pid);
    p.sat_one = load::run_in(env.one.clone(), timed(&one, Pace::Saturate, sizes.saturation_connections)).await?;
    p.sat_all = load::run_in(env.all.clone(), timed(&all, Pace::Saturate, sizes.saturation_connections)).await?;
    let cpu2 = cpu_seconds(pid);
    let sat_requests = (p.sat_one.latencies_us.len() + p.sat_all.latencies_us.len()).max(1) as f64;
    p.fixed_cpu_s = cpu1 - cpu0;
    p.sat_cpu_ms_per_k = (cpu2 - cpu1) * 1000.0 / sat_requests * 1000.0;
    let usage = pid.and_then(procstat::read);
    p.peak_rss_mib = usage.map_or(f64::NAN, |u| u.peak_rss_mib());
    p.end_anon_mib = usage.map_or(f64::NAN, |u| u.rss_anon_mib());
    p.end_file_mib = usage.map_or(f64::NAN, |u| u.rss_file_mib());
    Ok(p)
}

/// CPU seconds of `pid` so far; NaN for the floor (it runs inside this process).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    pid.and_then(procstat::read).map_or(f64::NAN, |u| u.cpu.as_secs_f64())
}

/// The token request SDKs send, optionally naming a user-assigned identity by client ID.
fn token_path(resource: &str, client_id: Option<&str>) -> String {
    let mut path = format!("/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}");
    if let Some(id) = client_id {
        path.push_str("&client_id=");
        path.push_str(id);
    }
    path
}

/// How each implementation's run values of one metric are read.
struct Metric {
    name: String,
    unit: &'static str,
    better: Better,
    value: fn(&Phases) -> f64,
    /// Which phase's errors concern this metric.
    phase: fn(&Phases) -> &Outcome,
    floor: bool,
}

fn metrics(sizes: &Sizes) -> Vec<Metric> {
    let [low, high] = sizes.rates;
    let lat = |name: String, value: fn(&Phases) -> f64, phase: fn(&Phases) -> &Outcome| Metric {
        name,
        unit: "ms",
        better: Better::Lower,
        value,
        phase,
        floor: true,
    };
    // Memory and CPU of the process under test: no floor (it runs inside this process).
    let usage = |name: String, unit: &'static str, value: fn(&Phases) -> f64| Metric {
        name,
        unit,
        better: Better::Lower,
        value,
        phase: |p| &p.sat_all,
        floor: false,
    };
    vec![
        lat("cold p50 (1 identity, new resource each)".into(), |p| p.cold.latencies().percentile_ms(0.5), |p| &p.cold),
        lat("cold p99 (1 identity, new resource each)".into(), |p| p.cold.latencies().percentile_ms(0.99), |p| &p.cold),
        lat(
            format!("first request per identity p50 ({IDENTITIES} identities)"),
            |p| p.first.latencies().percentile_ms(0.5),
            |p| &p.first,
        ),
        lat(format!("warm p50 @ {low} req/s (1 identity)"), |p| p.low.latencies().percentile_ms(0.5), |p| &p.low),
        lat(format!("warm p99 @ {low} req/s (1 identity)"), |p| p.low.latencies().percentile_ms(0.99), |p| &p.low),
        lat(format!("warm p50 @ {high} req/s (1 identity)"), |p| p.high.latencies().percentile_ms(0.5), |p| &p.high),
        lat(format!("warm p99 @ {high} req/s (1 identity)"), |p| p.high.latencies().percentile_ms(0.99), |p| &p.high),
        lat(
            format!("warm p99 @ {high} req/s ({IDENTITIES} identities)"),
            |p| p.high_all.latencies().percentile_ms(0.99),
            |p| &p.high_all,
        ),
        Metric {
            name: "saturation throughput (1 identity)".into(),
            unit: "req/s",
            better: Better::Higher,
            value: |p| p.sat_one.rps(),
            phase: |p| &p.sat_one,
            floor: true,
        },
        lat("saturation p99 (1 identity)".into(), |p| p.sat_one.latencies().percentile_ms(0.99), |p| &p.sat_one),
        Metric {
            name: format!("saturation throughput ({IDENTITIES} identities)"),
            unit: "req/s",
            better: Better::Higher,
            value: |p| p.sat_all.rps(),
            phase: |p| &p.sat_all,
            floor: true,
        },
        lat(
            format!("saturation p99 ({IDENTITIES} identities)"),
            |p| p.sat_all.latencies().percentile_ms(0.99),
            |p| &p.sat_all,
        ),
        usage(format!("peak resident memory ({} pods on the node)", sizes.pods), "MiB", |p| p.peak_rss_mib),
        usage("of it at the end: anonymous (heap, stacks)".into(), "MiB", |p| p.end_anon_mib),
        usage("of it at the end: file-backed (the binary's code, shared, clean)".into(), "MiB", |p| p.end_file_mib),
        Metric {
            phase: |p| &p.cold,
            ..usage("resident memory once Active, before any request".into(), "MiB", |p| p.idle_rss_mib)
        },
        Metric {
            phase: |p| &p.high_all,
            ..usage("CPU time, the three fixed-rate phases".into(), "s", |p| p.fixed_cpu_s)
        },
        usage("CPU time per 1000 requests at saturation".into(), "ms", |p| p.sat_cpu_ms_per_k),
    ]
}

fn section(sizes: &Sizes, results: &Results) -> Section {
    let series = |runs: &[Phases], f: fn(&Phases) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let mut notes = vec![
        "The original has no token cache: each of its requests, warm or cold, is a call to the node's IMDS \
         (the simulator, which signs a token per call in the benchmark's process on the same cores), so its \
         throughput is bounded by that IMDS; ours answers warm requests from its cache."
            .to_owned(),
        "The floor's memory and CPU are not reported: it runs inside the benchmark's process.".to_owned(),
    ];
    let mut rows = Vec::new();
    for m in metrics(sizes) {
        let original = match &results.original_unavailable {
            Some(why) => Original::Unavailable(why.clone()),
            None => Original::Measured(series(&results.original, m.value)),
        };
        let mut row = Row::new(m.name.clone(), m.unit, m.better, series(&results.ours, m.value)).original(original);
        if m.floor {
            row = row.floor(series(&results.floor, m.value));
        }
        row = with_target(row, &m.name);
        let mut why: Vec<String> = Vec::new();
        if row.target_met() == Some(false) {
            why.push(why_missed(&m.name, results, sizes));
        }
        let errors: Vec<String> = [("ours", &results.ours), ("original", &results.original), ("floor", &results.floor)]
            .iter()
            .filter_map(|(who, runs)| error_note(who, runs, m.phase))
            .collect();
        why.extend(errors);
        if !why.is_empty() {
            row = row.note(why.join("; "));
        }
        rows.push(row);
    }
    if let Some(why) = &results.original_unavailable {
        notes.push(format!("The original was not measured: {why}"));
    }
    Section { title: "NMI: token requests through the node's DNAT path".to_owned(), setup: setup(sizes), rows, notes }
}

fn with_target(row: Row, name: &str) -> Row {
    if name.starts_with("warm p99") && name.ends_with("(1 identity)") {
        row.target(Target::AtMostTimesFloor(1.5))
    } else if name.starts_with("saturation throughput") {
        row.target(Target::AtLeastTimesOriginal(10.0))
    } else if name.starts_with("peak resident memory") {
        row.target(Target::AtMost(10.0))
    } else {
        row
    }
}

/// "ours: 3 of 1200 requests failed (first: 404: …)" when a phase had errors.
fn error_note(who: &str, runs: &[Phases], phase: fn(&Phases) -> &Outcome) -> Option<String> {
    let errors: u64 = runs.iter().map(|p| phase(p).errors).sum();
    if errors == 0 {
        return None;
    }
    let total: usize = runs.iter().map(|p| phase(p).latencies_us.len()).sum();
    let first = runs.iter().find_map(|p| phase(p).first_error.clone()).unwrap_or_default();
    Some(format!("{who}: {errors} of {total} requests failed (first: {first})"))
}

/// The median over runs of one figure.
fn med(runs: &[Phases], f: fn(&Phases) -> f64) -> Option<f64> {
    crate::report::median(&runs.iter().map(f).collect::<Vec<_>>())
}

fn fmt2(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"))
}

/// Says why a target was missed, from what was measured alongside it.
fn why_missed(name: &str, results: &Results, sizes: &Sizes) -> String {
    if name.starts_with("peak resident memory") {
        let (idle, peak) = (med(&results.ours, |p| p.idle_rss_mib), med(&results.ours, |p| p.peak_rss_mib));
        let (anon, file) = (med(&results.ours, |p| p.end_anon_mib), med(&results.ours, |p| p.end_file_mib));
        format!(
            "missed: {} MiB resident already once Active, before any request; the load added {} MiB. At the end \
             {} MiB was the binary's code mapped from the page cache and {} MiB heap and stacks",
            fmt2(idle),
            fmt2(peak.zip(idle).map(|(p, i)| p - i)),
            fmt2(file),
            fmt2(anon)
        )
    } else if name.starts_with("warm p99") {
        let p50: fn(&Phases) -> f64 = if name.contains(&format!(" @ {} ", sizes.rates[0])) {
            |p| p.low.latencies().percentile_ms(0.5)
        } else {
            |p| p.high.latencies().percentile_ms(0.5)
        };
        format!(
            "missed: at p50 ours {} ms against the floor's {} ms; per request ours also finds the pod by source \
             IP, its assignments and the cached token, the floor writes a fixed answer",
            fmt2(med(&results.ours, p50)),
            fmt2(med(&results.floor, p50))
        )
    } else if name.starts_with("saturation throughput") {
        let rps: fn(&Phases) -> f64 =
            if name.contains("(1 identity)") { |p| p.sat_one.rps() } else { |p| p.sat_all.rps() };
        let share = med(&results.ours, rps).zip(med(&results.floor, rps));
        format!(
            "missed: ours reached {}% of the floor's throughput on the same generator and cores",
            share.map_or_else(|| "—".to_owned(), |(o, f)| format!("{:.0}", 100.0 * o / f))
        )
    } else {
        "missed".to_owned()
    }
}

fn setup(sizes: &Sizes) -> String {
    let [low, high] = sizes.rates;
    format!(
        "One node network namespace with the Azure simulator's IMDS on 169.254.169.254:80 (type-0 user-assigned \
         identities, tokens signed per request, served from this benchmark's process) and {pods} Pod objects on \
         that node in a private kube-apiserver, each with a distinct podIP and an Assigned AzureAssignedIdentity \
         (written as MIC would; {ids} identities on the node). Two of the pods are real pod network namespaces \
         (veth to the node) that send the load: one has 1 identity, the other all {ids}, asked for in rotation by \
         `client_id=` (the original selects among a pod's assigned identities by client ID too). Every request is \
         `GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with \
         `Metadata: true`, DNATed in the node's `nat PREROUTING` (chain `aad-metadata`, `! -s 127.0.0.1/32 -d \
         169.254.169.254/32 --dport 80 -j DNAT --to-destination 127.0.0.1:2579`) to NMI; each NMI installs that \
         rule itself, for the floor this benchmark installs the same rule. Both NMIs run in standard mode with \
         default flags (plus `--node`, `--allow-network-plugin-kubenet`, `--http-probe-port`; ours also with \
         `--pod-requests-per-second=0 --imds-max-per-second=1000000`, since two pods send all the load and the \
         simulator's IMDS has no per-second limit, and the original has neither limit), KUBECONFIG \
         through a relay into the node, and fetch tokens from the node's IMDS. The floor is a minimal hyper \
         HTTP/1.1 server (2 worker threads, in this process) answering every request with our NMI's token answer. \
         One load generator (Rust, hyper HTTP/1.1, keep-alive connections, nodelay) drives all three; ours, the \
         original and the floor take turns in rotating order within each run, each NMI started fresh (empty \
         token cache). Phases per run: cold = {cold} sequential requests on one connection, each for a resource \
         not asked for before (a token cache miss for ours; the original has no cache, so its every request is \
         like this); first request per identity = one request for each of the {ids} identities right after \
         start; fixed rates = {low} and {high} req/s open loop over {rc} connections for {secs} s each (latency \
         from each request's due time, so queueing counts), {high} req/s also with all {ids} identities; \
         saturation = {sc} connections, closed loop, {secs} s. Warm = the same identity and resource again \
         (served from ours' cache after the first). Memory is the NMI's VmHWM at the end of its run; CPU is \
         user+system from /proc. 2 shared cores: the load generator, the simulator, the apiserver and the NMI \
         under test compete for them.",
        pods = sizes.pods,
        ids = IDENTITIES,
        cold = sizes.cold,
        rc = sizes.rate_connections,
        sc = sizes.saturation_connections,
        secs = sizes.phase.as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_path_is_the_sdk_request_with_an_optional_client_id() {
        assert_eq!(
            token_path(RESOURCE, None),
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"
        );
        assert!(token_path(RESOURCE, Some("abc")).ends_with("&resource=https://management.azure.com/&client_id=abc"));
    }

    #[test]
    fn targets_go_on_the_issues_rows_only() {
        let sizes = Sizes::of(Size::Full);
        let targeted: Vec<(String, Option<Target>)> = metrics(&sizes)
            .iter()
            .map(|m| (m.name.clone(), with_target(Row::new(&m.name, m.unit, m.better, vec![]), &m.name).target))
            .filter(|(_, t)| t.is_some())
            .collect();
        let names: Vec<&str> = targeted.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "warm p99 @ 50 req/s (1 identity)",
                "warm p99 @ 200 req/s (1 identity)",
                "saturation throughput (1 identity)",
                "saturation throughput (20 identities)",
                "peak resident memory (110 pods on the node)",
            ]
        );
    }

    #[test]
    fn a_missed_target_is_explained_with_its_own_phase() {
        let sizes = Sizes::of(Size::Tiny);
        let run = |sat_one: usize, sat_all: usize, low_us: u64, high_us: u64| Phases {
            sat_one: Outcome { latencies_us: vec![1; sat_one], elapsed: Duration::from_secs(1), ..Outcome::default() },
            sat_all: Outcome { latencies_us: vec![1; sat_all], elapsed: Duration::from_secs(1), ..Outcome::default() },
            low: Outcome { latencies_us: vec![low_us], ..Outcome::default() },
            high: Outcome { latencies_us: vec![high_us], ..Outcome::default() },
            idle_rss_mib: 12.0,
            peak_rss_mib: 15.5,
            end_anon_mib: 4.0,
            end_file_mib: 11.0,
            ..Phases::default()
        };
        let results = Results {
            ours: vec![run(400, 300, 2000, 3000)],
            floor: vec![run(800, 1000, 1000, 1000)],
            ..Results::default()
        };
        let why = |name: &str| why_missed(name, &results, &sizes);
        assert!(why("saturation throughput (1 identity)").contains("reached 50%"));
        assert!(why("saturation throughput (20 identities)").contains("reached 30%"));
        assert!(why("warm p99 @ 20 req/s (1 identity)").contains("ours 2.00 ms against the floor's 1.00 ms"));
        assert!(why("warm p99 @ 100 req/s (1 identity)").contains("ours 3.00 ms"));
        assert!(why("peak resident memory (10 pods on the node)").contains("12.00 MiB resident already"));
        assert!(why("peak resident memory (10 pods on the node)").contains("added 3.50 MiB"));
        assert!(why("peak resident memory (10 pods on the node)").contains("11.00 MiB was the binary's code"));
    }

    #[test]
    fn error_note_counts_failures_over_runs() {
        let failing = Phases {
            cold: Outcome {
                latencies_us: vec![1, 2],
                errors: 1,
                first_error: Some("404: no".into()),
                ..Outcome::default()
            },
            ..Phases::default()
        };
        let clean = Phases { cold: Outcome { latencies_us: vec![1], ..Outcome::default() }, ..Phases::default() };
        assert_eq!(error_note("ours", std::slice::from_ref(&clean), |p| &p.cold), None);
        assert_eq!(
            error_note("original", &[failing, clean], |p| &p.cold).as_deref(),
            Some("original: 1 of 3 requests failed (first: 404: no)")
        );
    }
}
