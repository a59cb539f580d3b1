//! Cloud config (azure.json) and Azure environments (in progress).
