//! The workload of one MIC benchmark size, as plain data: which scale sets and nodes exist, which
//! identity each pod binds and which node it lands on. Pure (no clients, no clock), so placement
//! and the targets derived from it are unit-tested and identical for ours and the original.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Identities one ARM PATCH may carry; both MICs chunk larger updates (the original's cap).
pub(super) const MAX_IDENTITIES_PER_WRITE: usize = 150;

/// One benchmark size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// Short name used in titles (`tiny`, `small`, `medium`, `large`).
    pub(super) name: &'static str,
    pub(super) pods: usize,
    pub(super) identities: usize,
    /// Scale sets; nodes are split evenly over them.
    pub(super) scale_sets: usize,
    pub(super) nodes_per_scale_set: usize,
    /// Runs of ours and of the original (the original may get fewer when it is slow).
    pub(super) runs_ours: usize,
    pub(super) runs_original: usize,
    /// How long ours, then the original, may take to converge before the run is abandoned.
    pub(super) timeout_ours: Duration,
    pub(super) timeout_original: Duration,
}

/// The simulated ARM timing every size runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ArmTiming {
    /// Added to every ARM call (GET, PUT/PATCH, operation poll).
    pub(super) latency: Duration,
    /// How long a VM/VMSS write stays `InProgress`.
    pub(super) lro: Duration,
}

/// Reads ~100 ms; a write answers after 100 ms and its operation runs 1.5 s.
pub(super) const ARM_TIMING: ArmTiming =
    ArmTiming { latency: Duration::from_millis(100), lro: Duration::from_millis(1500) };

impl ArmTiming {
    /// The least time one identity update of a scale set can take: GET, PATCH, the operation, one
    /// poll. "Converged within the ARM latency plus 5 s" is measured against this.
    pub(super) fn one_update(&self) -> Duration {
        self.latency * 3 + self.lro
    }
}

impl Plan {
    pub(super) fn nodes(&self) -> usize {
        self.scale_sets * self.nodes_per_scale_set
    }

    /// Scale set names, `benchpool0`, `benchpool1`, ...
    pub(super) fn scale_set(&self, s: usize) -> String {
        format!("benchpool{s}")
    }

    /// Node `n` as (scale set index, instance index).
    pub(super) fn node_slot(&self, n: usize) -> (usize, usize) {
        (n / self.nodes_per_scale_set, n % self.nodes_per_scale_set)
    }

    /// The Kubernetes name of node `n`, AKS style (`<vmss>-<instance>`).
    pub(super) fn node_name(&self, n: usize) -> String {
        let (s, i) = self.node_slot(n);
        format!("{}-{i}", self.scale_set(s))
    }

    /// Identity of pod `p`: round-robin, so every identity gets `pods / identities` pods.
    pub(super) fn identity_of(&self, p: usize) -> usize {
        p % self.identities
    }

    /// Node of pod `p`: a fixed pseudo-random spread (the same for every run and both MICs), so
    /// an identity's pods land on several scale sets as a scheduler would place them.
    pub(super) fn node_of(&self, p: usize) -> usize {
        (splitmix64(p as u64 ^ 0x6d69_635f_6265_6e63) % self.nodes() as u64) as usize
    }

    /// Distinct identities each scale set must carry once every pod is assigned.
    pub(super) fn identities_per_scale_set(&self) -> BTreeMap<usize, usize> {
        let mut sets: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for p in 0..self.pods {
            sets.entry(self.node_slot(self.node_of(p)).0).or_default().insert(self.identity_of(p));
        }
        sets.into_iter().map(|(s, ids)| (s, ids.len())).collect()
    }

    /// The fewest ARM writes per scale set that can carry its identities (one per chunk of
    /// [`MAX_IDENTITIES_PER_WRITE`]), for the busiest scale set: the "one write per scale set per
    /// batch" target.
    pub(super) fn min_writes_per_scale_set(&self) -> usize {
        self.identities_per_scale_set().values().map(|n| n.div_ceil(MAX_IDENTITIES_PER_WRITE)).max().unwrap_or(0)
    }
}

/// The sizes a [`crate::Size`] runs. `runs` is the requested repetitions.
pub(super) fn plans(size: crate::Size, runs: usize) -> Vec<Plan> {
    let secs = Duration::from_secs;
    match size {
        crate::Size::Tiny => vec![Plan {
            name: "tiny",
            pods: 10,
            identities: 2,
            scale_sets: 2,
            nodes_per_scale_set: 1,
            runs_ours: runs,
            runs_original: runs,
            timeout_ours: secs(60),
            timeout_original: secs(60),
        }],
        crate::Size::Full => vec![
            Plan {
                name: "small",
                pods: 100,
                identities: 10,
                scale_sets: 2,
                nodes_per_scale_set: 5,
                runs_ours: runs,
                runs_original: runs,
                timeout_ours: secs(120),
                timeout_original: secs(180),
            },
            Plan {
                name: "medium",
                pods: 1000,
                identities: 100,
                scale_sets: 5,
                nodes_per_scale_set: 20,
                runs_ours: runs,
                // At its default client QPS of 5 one run takes about 7 minutes.
                runs_original: runs.min(1),
                timeout_ours: secs(180),
                timeout_original: secs(600),
            },
            Plan {
                name: "large",
                pods: 5000,
                identities: 500,
                scale_sets: 5,
                nodes_per_scale_set: 20,
                runs_ours: runs.min(2),
                runs_original: runs.min(1),
                timeout_ours: secs(300),
                timeout_original: secs(300),
            },
        ],
    }
}

/// SplitMix64: a tiny, well-mixed, dependency-free hash for the fixed placement.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Size;

    fn large() -> Plan {
        plans(Size::Full, 3).pop().expect("three full sizes")
    }

    #[test]
    fn full_sizes_are_the_issues() {
        let p = plans(Size::Full, 3);
        let shape: Vec<_> = p.iter().map(|p| (p.pods, p.identities, p.nodes())).collect();
        assert_eq!(shape, [(100, 10, 10), (1000, 100, 100), (5000, 500, 100)]);
        assert_eq!(p[2].runs_ours, 2, "the largest size runs ours at most twice");
        assert_eq!(plans(Size::Tiny, 1)[0].runs_original, 1);
    }

    #[test]
    fn every_identity_gets_the_same_number_of_pods() {
        let p = large();
        let mut per: BTreeMap<usize, usize> = BTreeMap::new();
        for pod in 0..p.pods {
            *per.entry(p.identity_of(pod)).or_default() += 1;
        }
        assert_eq!(per.len(), 500);
        assert!(per.values().all(|&n| n == 10), "{per:?}");
    }

    #[test]
    fn pods_spread_over_every_node_and_are_placed_the_same_each_time() {
        let p = large();
        let used: BTreeSet<usize> = (0..p.pods).map(|pod| p.node_of(pod)).collect();
        assert_eq!(used.len(), p.nodes());
        assert_eq!(p.node_of(4321), large().node_of(4321));
        assert_eq!(p.node_name(0), "benchpool0-0");
        assert_eq!(p.node_name(99), "benchpool4-19");
    }

    #[test]
    fn writes_target_counts_chunks_of_the_busiest_scale_set() {
        let p = large();
        let per = p.identities_per_scale_set();
        assert_eq!(per.len(), 5);
        // 10 pods per identity over 5 scale sets: an identity misses a set with p = 0.8^10 ≈ 0.11.
        assert!(per.values().all(|&n| n > 400 && n < 500), "{per:?}");
        assert_eq!(p.min_writes_per_scale_set(), 4);
        let tiny = &plans(Size::Tiny, 1)[0];
        assert_eq!(tiny.min_writes_per_scale_set(), 1);
    }

    #[test]
    fn one_update_is_get_patch_operation_and_poll() {
        assert_eq!(ARM_TIMING.one_update(), Duration::from_millis(1800));
    }
}
