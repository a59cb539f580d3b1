//! MIC, the Managed Identity Controller.
//!
//! ```text
//! watch caches --view--> views --decide::desired/plan--> Plan --act::apply (leader only)--> kube + ARM
//! ```

pub mod decide;
pub mod view;
