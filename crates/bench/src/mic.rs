//! MIC benchmark: how fast each MIC assigns identities to a burst of pods, and at what cost in ARM
//! calls, API-server writes, memory and CPU. Ours and the original v1.8.17 run as processes,
//! alternating, against the same private kube-apiserver and Azure simulator, each run from a fresh
//! state (objects cleaned, scale sets recreated, counters zeroed, a new leader-election lock).
//!
//! ```text
//! plan (sizes, placement) -> World (apiserver, simulator, nodes) -> per run: identities, bindings,
//!   MIC process (Active) -> pods -> watch until all Assigned -> counters, /proc -> kill -> clean
//! ```

mod plan;
mod process;
mod world;

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Config;
use crate::report::{Better, Original, Row, Section, Target};
use plan::{ARM_TIMING, Plan};
use process::{Flavor, MicProcess};
use world::World;

/// Counters are read this long after convergence, so late writes of a run are counted too.
const SETTLE: Duration = Duration::from_secs(2);
/// How long a MIC may take to win its (fresh) leader election and start its sync loop.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Measured {
    /// From the first pod create until every AzureAssignedIdentity is `Assigned` (seconds).
    converge: f64,
    /// From the last pod create returning until then (seconds).
    after_last_create: f64,
    /// Creating the pods (the load generator's own time, seconds).
    create: f64,
    arm_reads: f64,
    arm_writes: f64,
    /// API-server writes on AzureAssignedIdentities.
    assigned_writes: f64,
    peak_rss_mib: f64,
    /// Resident memory once Active, before any pod (the fixed cost), MiB.
    idle_rss_mib: f64,
    /// MIC's CPU time from the first pod create until the counters are read (seconds).
    cpu: f64,
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Converged(Measured),
    /// Not every assignment was `Assigned` in time; `Measured.converge` is the timeout.
    TimedOut {
        assigned: usize,
        measured: Measured,
    },
}

/// The runs of one MIC at one size.
#[derive(Debug, Clone, PartialEq, Default)]
struct Runs {
    converged: Vec<Measured>,
    /// Why some runs have no figures (timeouts, start-up failures), short enough for a cell.
    failures: Vec<String>,
    /// What the runs that timed out had done by then.
    partial: Vec<String>,
}

/// Runs the MIC benchmark at every size of `config.size`: ours and, when built, the original.
pub async fn run(config: &Config) -> anyhow::Result<Vec<Section>> {
    let mut sections = Vec::new();
    let plans = plan::plans(config.size, config.runs);
    if let Some(unknown) = config.mic_sizes.iter().find(|n| !plans.iter().any(|p| p.name == n.as_str())) {
        let known: Vec<&str> = plans.iter().map(|p| p.name).collect();
        anyhow::bail!("no MIC size {unknown:?} at this --size; known: {}", known.join(", "));
    }
    let wanted = |p: &Plan| config.mic_sizes.is_empty() || config.mic_sizes.iter().any(|n| n == p.name);
    for plan in plans.into_iter().filter(wanted) {
        eprintln!(
            "bench mic: {} size ({} pods, {} identities, {} nodes)",
            plan.name,
            plan.pods,
            plan.identities,
            plan.nodes()
        );
        sections.push(run_plan(config, plan).await?);
    }
    Ok(sections)
}

async fn run_plan(config: &Config, plan: Plan) -> anyhow::Result<Section> {
    let world = World::new(plan.clone()).await.with_context(|| format!("setting up the {} size", plan.name))?;
    let ours_bin = config.ours.join("mic");
    let original_bin = config.original.as_ref().map(|d| d.join("mic"));
    let (mut ours, mut original) = (Runs::default(), Runs::default());
    for r in 0..plan.runs_ours.max(plan.runs_original) {
        if r < plan.runs_ours {
            let outcome = run_once(&world, Flavor::Ours, &ours_bin, r, plan.timeout_ours).await?;
            ours.record(outcome, plan.pods, plan.timeout_ours);
        }
        if let Some(bin) = original_bin.as_deref().filter(|_| r < plan.runs_original) {
            match run_once(&world, Flavor::Original, bin, r, plan.timeout_original).await {
                Ok(outcome) => original.record(outcome, plan.pods, plan.timeout_original),
                Err(e) => {
                    eprintln!("bench mic: the original could not be measured: {e:#}");
                    original.failures.push(format!("could not run: {}", first_line(&format!("{e:#}"))));
                    break;
                }
            }
        }
    }
    if let Err(e) = world.clean().await {
        eprintln!("bench mic: final clean-up failed: {e:#}");
    }
    let original = if original_bin.is_some() { Ok(original) } else { Err("not built (--no-original)".to_owned()) };
    Ok(section(&plan, &ours, &original))
}

impl Runs {
    fn record(&mut self, outcome: Outcome, pods: usize, timeout: Duration) {
        match outcome {
            Outcome::Converged(m) => self.converged.push(m),
            Outcome::TimedOut { assigned, measured } => {
                self.failures.push(format!("did not converge within {} s", timeout.as_secs()));
                self.partial.push(format!(
                    "{assigned} of {pods} Assigned after {} s; by then peak RSS {:.0} MiB, {:.1} s CPU, {} ARM writes, \
                     {} API-server writes on AzureAssignedIdentities",
                    timeout.as_secs(),
                    measured.peak_rss_mib,
                    measured.cpu,
                    measured.arm_writes,
                    measured.assigned_writes
                ));
            }
        }
    }
}

/// One run of one MIC from a fresh state.
async fn run_once(
    world: &World,
    flavor: Flavor,
    bin: &std::path::Path,
    run: usize,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let pods = world.plan.pods;
    world.clean().await.context("cleaning up before the run")?;
    world.reset_azure();
    world.create_identities_and_bindings().await?;
    let tag = format!("{}-{}-{run}", world.plan.name, flavor.label());
    let mut mic = MicProcess::spawn(flavor, bin, &world.files, &tag)?;
    mic.wait_active(ACTIVE_TIMEOUT).await?;
    let (mut assigned, watch_task) = world.watch_assigned().await?;
    world.sim.reset_counters();
    let writes_before = world.assigned_writes().await?;
    let idle = mic.usage().context("MIC exited")?;

    let start = Instant::now();
    world.create_pods().await?;
    let created = start.elapsed();
    let deadline = start + timeout;
    let mut done = None;
    while done.is_none() && Instant::now() < deadline && mic.alive() {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        if let Ok(Ok(_)) = tokio::time::timeout(wait, assigned.wait_for(|n| *n >= pods)).await {
            done = Some(start.elapsed());
        }
    }
    anyhow::ensure!(mic.alive(), "the MIC exited during the run; log tail:\n{}", mic.log_tail());
    let reached = *assigned.borrow();
    tokio::time::sleep(SETTLE).await;
    let counters = world.counters();
    let writes = world.assigned_writes().await? - writes_before;
    let usage = mic.usage().context("MIC exited")?;
    mic.kill().await;
    drop(watch_task);

    let converge = done.unwrap_or(timeout);
    let targets = counters.targets.values();
    let measured = Measured {
        converge: converge.as_secs_f64(),
        after_last_create: converge.saturating_sub(created).as_secs_f64(),
        create: created.as_secs_f64(),
        arm_reads: targets.clone().map(|t| t.reads).sum::<u64>() as f64,
        arm_writes: targets.map(|t| t.writes).sum::<u64>() as f64,
        assigned_writes: writes as f64,
        peak_rss_mib: usage.peak_rss_mib(),
        idle_rss_mib: idle.rss as f64 / (1024.0 * 1024.0),
        cpu: usage.cpu.saturating_sub(idle.cpu).as_secs_f64(),
    };
    eprintln!("bench mic: {tag}: {reached}/{pods} Assigned, {measured:?}");
    Ok(match done {
        Some(_) => Outcome::Converged(measured),
        None => Outcome::TimedOut { assigned: reached, measured },
    })
}

/// The table of one size.
fn section(plan: &Plan, ours: &Runs, original: &Result<Runs, String>) -> Section {
    let per_set = plan.scale_sets as f64;
    let pods = plan.pods as f64;
    let fastest = ARM_TIMING.one_update().as_secs_f64();
    let min_writes = plan.min_writes_per_scale_set() as f64;
    let create = crate::report::median(&values(&ours.converged, |m| m.create)).unwrap_or(f64::NAN);

    let mut converge = row(ours, original, "time to all Assigned (from first pod create)", "s", |m| m.converge);
    if plan.name == "large" {
        let limit = fastest + 5.0;
        converge = converge.target(Target::AtMost(limit));
        if converge.target_met() == Some(false) {
            let median =
                |f: fn(&Measured) -> f64| crate::report::median(&values(&ours.converged, f)).unwrap_or(f64::NAN);
            let (writes, took) = (median(|m| m.assigned_writes), median(|m| m.converge));
            converge = converge.note(format!(
                "missed: creating the pods alone took {create:.1} s; each assignment needs two API-server writes \
                 (create `Created`, then patch `Assigned` after ARM), {writes:.0} in all, ≈ {:.0}/s from a \
                 kube-apiserver sharing the machine's 2 cores; the busiest scale set needs {min_writes:.0} ARM \
                 writes (≤ 150 identities each), which queue behind each other ({:.1} s operation each)",
                writes / took,
                ARM_TIMING.lro.as_secs_f64()
            ));
        }
    }
    let rows = vec![
        converge,
        row(ours, original, "time to all Assigned (from last pod create)", "s", |m| m.after_last_create),
        row(ours, original, "pod creation by the load generator", "s", |m| m.create)
            .note("the same client for both; MIC works while pods are still being created"),
        row(ours, original, "ARM writes (PUT/PATCH of a scale set)", "calls", |m| m.arm_writes),
        writes_per_set(ours, original, per_set, min_writes, create),
        row(ours, original, "ARM reads (GET of a scale set)", "calls", |m| m.arm_reads),
        row(ours, original, "API-server writes per assignment", "writes", move |m| m.assigned_writes / pods)
            .target(Target::AtMost(2.1))
            .note("POST/PUT/PATCH/DELETE of AzureAssignedIdentities (apiserver_request_total) ÷ pods"),
        rss(plan, ours, original),
        rss_vs_original(ours, original),
        row(ours, original, "resident memory when Active, before any pod", "MiB", |m| m.idle_rss_mib),
        row(ours, original, "CPU time during the run", "s", |m| m.cpu),
    ];
    Section {
        title: format!(
            "MIC: {} pods, {} identities, {} nodes ({})",
            plan.pods,
            plan.identities,
            plan.nodes(),
            plan.name
        ),
        setup: setup_text(plan, ours, original),
        rows,
        notes: notes(ours, original),
    }
}

fn writes_per_set(ours: &Runs, original: &Result<Runs, String>, per_set: f64, min: f64, create: f64) -> Row {
    let r = row(ours, original, "ARM writes per scale set", "calls", move |m| m.arm_writes / per_set)
        .target(Target::AtMost(min));
    let need = format!("the busiest scale set needs ≥ {min:.0} (≤ 150 identities per write)");
    if r.target_met() != Some(false) {
        return r.note(need);
    }
    r.note(format!(
        "missed: {need}, but pods were still being created ({create:.1} s) when the first write left; what arrives \
         while a write is in flight goes into the next one"
    ))
}

fn rss(plan: &Plan, ours: &Runs, original: &Result<Runs, String>) -> Row {
    let r = row(ours, original, "peak resident memory", "MiB", |m| m.peak_rss_mib).target(Target::AtMost(64.0));
    if r.target_met() != Some(false) {
        return r;
    }
    let idle = crate::report::median(&values(&ours.converged, |m| m.idle_rss_mib)).unwrap_or(f64::NAN);
    let peak = crate::report::median(&r.ours).unwrap_or(f64::NAN);
    r.note(format!(
        "missed: it grows with the load: {idle:.0} MiB before any pod, then ≈ {:.0} KiB per assignment",
        (peak - idle) * 1024.0 / plan.pods as f64
    ))
}

fn rss_vs_original(ours: &Runs, original: &Result<Runs, String>) -> Row {
    let r = row(ours, original, "peak resident memory vs the original", "MiB", |m| m.peak_rss_mib)
        .target(Target::AtMostTimesOriginal(0.5));
    if r.target_met() != Some(false) {
        return r;
    }
    let idle = crate::report::median(&values(&ours.converged, |m| m.idle_rss_mib)).unwrap_or(f64::NAN);
    let peak = crate::report::median(&r.ours).unwrap_or(f64::NAN);
    r.note(format!(
        "missed: {idle:.0} MiB of ours' {peak:.0} MiB is resident before any pod exists (binary, runtime, clients); \
         the load itself adds {:.0} MiB",
        peak - idle
    ))
}

fn row(ours: &Runs, original: &Result<Runs, String>, metric: &str, unit: &str, f: impl Fn(&Measured) -> f64) -> Row {
    let theirs = match original {
        Ok(r) if !r.converged.is_empty() => Original::Measured(values(&r.converged, &f)),
        Ok(r) => Original::Unavailable(r.failures.first().cloned().unwrap_or_else(|| "no run".to_owned())),
        Err(why) => Original::Unavailable(why.clone()),
    };
    Row::new(metric, unit, Better::Lower, values(&ours.converged, &f)).original(theirs)
}

fn values(runs: &[Measured], f: impl Fn(&Measured) -> f64) -> Vec<f64> {
    runs.iter().map(f).collect()
}

fn setup_text(plan: &Plan, ours: &Runs, original: &Result<Runs, String>) -> String {
    let busiest = plan.identities_per_scale_set().values().copied().max().unwrap_or(0);
    let original_runs = original.as_ref().map_or(0, |r| r.converged.len());
    format!(
        "{nodes} nodes in {sets} scale sets ({per} instances each); {pods} pods, each on a fixed pseudo-random \
         node; {ids} user-assigned identities (type 0, created in the simulator), one AzureIdentity and one binding \
         each, {ppi} pods per identity (the busiest scale set carries {busiest} identities). Simulated ARM: \
         {lat} ms added to every call (GET, PATCH, operation poll); writes are long-running operations of {lro} s, \
         queued per scale set; one identity update (GET, PATCH, operation, poll) takes ≥ {one:.1} s. Each run: \
         objects cleaned, scale sets recreated, counters zeroed, a new MIC process with default flags (the \
         original's default --clientQps is 5) and its own leader-election lock; once it reports Active, the pods \
         are created 32 at a time and a watch times the moment every AzureAssignedIdentity is Assigned. ARM and \
         API-server counters, peak RSS (VmHWM) and CPU are read {settle} s after that. Runs: ours {o} of {ro}, \
         original {g} of {rg} converged (timeouts: ours {to} s, original {tg} s).",
        nodes = plan.nodes(),
        sets = plan.scale_sets,
        per = plan.nodes_per_scale_set,
        pods = plan.pods,
        ids = plan.identities,
        ppi = plan.pods / plan.identities.max(1),
        lat = ARM_TIMING.latency.as_millis(),
        lro = ARM_TIMING.lro.as_secs_f64(),
        one = ARM_TIMING.one_update().as_secs_f64(),
        settle = SETTLE.as_secs(),
        o = ours.converged.len(),
        ro = plan.runs_ours,
        g = original_runs,
        rg = plan.runs_original,
        to = plan.timeout_ours.as_secs(),
        tg = plan.timeout_original.as_secs(),
    )
}

fn notes(ours: &Runs, original: &Result<Runs, String>) -> Vec<String> {
    let mut notes: Vec<String> = ours.failures.iter().map(|f| format!("ours: {f}")).collect();
    match original {
        Ok(r) => notes.extend(r.failures.iter().map(|f| format!("original: {f}"))),
        Err(why) => notes.push(format!("original: {why}")),
    }
    notes.extend(ours.partial.iter().map(|p| format!("ours, timed out: {p}")));
    if let Ok(r) = original {
        notes.extend(r.partial.iter().map(|p| format!("original, timed out: {p}")));
    }
    notes
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Size;

    fn mk_measured(converge: f64, rss: f64) -> Measured {
        Measured {
            converge,
            after_last_create: converge - 1.0,
            create: 1.0,
            arm_reads: 2.0,
            arm_writes: 8.0,
            assigned_writes: 2000.0,
            peak_rss_mib: rss,
            idle_rss_mib: 10.0,
            cpu: 1.0,
        }
    }

    fn large() -> Plan {
        plan::plans(Size::Full, 3).pop().expect("large")
    }

    #[test]
    fn a_timed_out_original_is_unavailable_with_its_reason() {
        let plan = large();
        let ours = Runs { converged: vec![mk_measured(5.0, 30.0)], ..Default::default() };
        let mut theirs = Runs::default();
        theirs.record(
            Outcome::TimedOut { assigned: 120, measured: mk_measured(300.0, 200.0) },
            plan.pods,
            Duration::from_secs(300),
        );
        let s = section(&plan, &ours, &Ok(theirs));
        let Original::Unavailable(why) = &s.rows[0].original else { panic!("{:?}", s.rows[0]) };
        assert_eq!(why, "did not converge within 300 s");
        assert_eq!(s.notes[0], "original: did not converge within 300 s");
        assert!(
            s.notes[1].starts_with("original, timed out: 120 of 5000 Assigned after 300 s; by then peak RSS 200 MiB")
        );
    }

    #[test]
    fn rows_normalise_per_scale_set_and_per_assignment_and_check_targets() {
        let plan = large();
        let ours = Runs { converged: vec![mk_measured(5.0, 30.0), mk_measured(7.0, 40.0)], ..Default::default() };
        let original = Ok(Runs { converged: vec![mk_measured(100.0, 90.0)], ..Default::default() });
        let s = section(&plan, &ours, &original);
        let by = |m: &str| s.rows.iter().find(|r| r.metric == m).unwrap_or_else(|| panic!("{m}"));
        assert_eq!(by("ARM writes per scale set").ours, [8.0 / 5.0, 8.0 / 5.0]);
        assert_eq!(by("ARM writes per scale set").target_met(), Some(true), "1.6 ≤ 4 chunks");
        assert_eq!(by("API-server writes per assignment").ours, [0.4, 0.4]);
        // Median 6 s against 1.8 s + 5 s.
        assert_eq!(s.rows[0].target_met(), Some(true));
        assert_eq!(by("peak resident memory vs the original").target_met(), Some(true), "35 ≤ 0.5 × 90");
        assert!(s.setup.contains("100 nodes in 5 scale sets"), "{}", s.setup);
    }

    #[test]
    fn missed_targets_say_why() {
        let plan = large();
        let ours = Runs { converged: vec![mk_measured(45.0, 140.0)], ..Default::default() };
        let original = Ok(Runs { converged: vec![mk_measured(400.0, 200.0)], ..Default::default() });
        let s = section(&plan, &ours, &original);
        let by = |m: &str| s.rows.iter().find(|r| r.metric == m).unwrap_or_else(|| panic!("{m}"));
        let rss = by("peak resident memory");
        assert_eq!(rss.target_met(), Some(false));
        assert!(rss.note.starts_with("missed: it grows with the load: 10 MiB before any pod"), "{}", rss.note);
        assert!(rss.note.contains("≈ 27 KiB per assignment"), "{}", rss.note);
        assert!(by("peak resident memory vs the original").note.starts_with("missed: 10 MiB of ours' 140 MiB"));
        assert!(s.rows[0].note.contains("2000 in all"), "{}", s.rows[0].note);
    }

    #[test]
    fn only_the_large_size_has_a_convergence_target() {
        let ours = Runs { converged: vec![mk_measured(5.0, 30.0)], ..Default::default() };
        let small = plan::plans(Size::Full, 1).remove(0);
        let s = section(&small, &ours, &Err("not built".to_owned()));
        assert_eq!(s.rows[0].target, None);
        assert_eq!(section(&large(), &ours, &Err(String::new())).rows[0].target, Some(Target::AtMost(6.8)));
    }
}
