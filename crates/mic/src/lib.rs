//! MIC, the Managed Identity Controller.
//!
//! ```text
//! watch caches --view--> views --decide::desired/plan--> Plan --act::apply (leader only)--> kube + ARM
//! ```

pub mod act;
pub mod args;
pub mod arm;
pub mod cache;
pub mod controller;
pub mod decide;
pub mod env;
pub mod events;
pub mod gate;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod run;
pub mod upgrade;
pub mod view;

pub use env::Env;
pub use run::{run, run_until};
