//! NMI benchmark (to be written).

use crate::Config;
use crate::report::Section;

/// Runs the NMI benchmark: ours, the original and the floor server.
pub async fn run(_config: &Config) -> anyhow::Result<Section> {
    anyhow::bail!("the NMI benchmark is not written yet")
}
