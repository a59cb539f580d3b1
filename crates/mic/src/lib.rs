//! MIC, the Managed Identity Controller.
//!
//! ```text
//! watch caches --view--> views --decide::desired/plan--> Plan --act::apply (leader only)--> kube + ARM
//! ```

pub mod act;
pub mod cache;
pub mod controller;
pub mod decide;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod upgrade;
pub mod view;
