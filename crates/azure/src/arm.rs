//! ARM client for VM/VMSS identities (in progress).
