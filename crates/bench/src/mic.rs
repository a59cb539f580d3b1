//! MIC benchmark (to be written).

use crate::Config;
use crate::report::Section;

/// Runs the MIC benchmark at every size: ours and the original.
pub async fn run(_config: &Config) -> anyhow::Result<Vec<Section>> {
    anyhow::bail!("the MIC benchmark is not written yet")
}
