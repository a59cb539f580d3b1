//! The node an IMDS instance serves, named the way the sandbox and tests name it (`vm:<name>`,
//! `vmss:<name>:<instance>`), and the VM or scale set it belongs to.

use serde::{Deserialize, Serialize};

use super::State;
use super::compute::{Compute, ComputeKind, ckey};

/// A node the IMDS face serves: a VM, or one instance of a VMSS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum NodeRef {
    /// A standalone VM, by name (in any resource group unless one is given).
    Vm {
        /// VM name.
        name: String,
        /// Resource group; `None` = the first VM with this name.
        #[serde(default)]
        resource_group: Option<String>,
    },
    /// One instance of a VMSS.
    VmssInstance {
        /// Scale set name.
        vmss: String,
        /// Instance ID (`0`, `1`, ...).
        instance: u32,
        /// Resource group; `None` = the first VMSS with this name.
        #[serde(default)]
        resource_group: Option<String>,
    },
}

impl NodeRef {
    /// A VM node.
    pub fn vm(name: impl Into<String>) -> Self {
        NodeRef::Vm { name: name.into(), resource_group: None }
    }
    /// A VMSS instance node.
    pub fn vmss_instance(vmss: impl Into<String>, instance: u32) -> Self {
        NodeRef::VmssInstance { vmss: vmss.into(), instance, resource_group: None }
    }
    /// Pins the node's resource group.
    pub fn in_resource_group(self, rg: impl Into<String>) -> Self {
        match self {
            NodeRef::Vm { name, .. } => NodeRef::Vm { name, resource_group: Some(rg.into()) },
            NodeRef::VmssInstance { vmss, instance, .. } => {
                NodeRef::VmssInstance { vmss, instance, resource_group: Some(rg.into()) }
            }
        }
    }
    /// The node's computer name: the VM name, or `<vmss>_<instance>` (as IMDS reports `compute.name`).
    pub fn node_name(&self) -> String {
        match self {
            NodeRef::Vm { name, .. } => name.clone(),
            NodeRef::VmssInstance { vmss, instance, .. } => format!("{vmss}_{instance}"),
        }
    }
}

impl std::str::FromStr for NodeRef {
    type Err = String;
    /// `vm:<name>` or `vmss:<name>:<instance>`; to pin the resource group put `<rg>/` before the name:
    /// `vm:rg/name`, `vmss:rg/name:0`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let split_rg = |x: &str| -> (Option<String>, String) {
            match x.split_once('/') {
                Some((rg, n)) => (Some(rg.to_owned()), n.to_owned()),
                None => (None, x.to_owned()),
            }
        };
        if let Some(rest) = s.strip_prefix("vm:") {
            let (resource_group, name) = split_rg(rest);
            if name.is_empty() {
                return Err("empty VM name".into());
            }
            return Ok(NodeRef::Vm { name, resource_group });
        }
        if let Some(rest) = s.strip_prefix("vmss:") {
            let (name, inst) = rest.rsplit_once(':').ok_or("expected vmss:<name>:<instance>")?;
            let instance = inst.parse::<u32>().map_err(|_| format!("bad instance id {inst:?}"))?;
            let (resource_group, vmss) = split_rg(name);
            if vmss.is_empty() {
                return Err("empty VMSS name".into());
            }
            return Ok(NodeRef::VmssInstance { vmss, instance, resource_group });
        }
        Err(format!("expected vm:<name> or vmss:<name>:<instance>, got {s:?}"))
    }
}

impl State {
    /// Finds the VM or VMSS a node belongs to.
    pub(crate) fn node_compute(&self, node: &NodeRef) -> Option<&Compute> {
        let (kind, name, rg) = match node {
            NodeRef::Vm { name, resource_group } => (ComputeKind::Vm, name, resource_group),
            NodeRef::VmssInstance { vmss, resource_group, .. } => (ComputeKind::Vmss, vmss, resource_group),
        };
        let c = match rg {
            Some(rg) => self.computes.get(&ckey(kind, rg, name)),
            None => self.computes.values().find(|c| c.kind == kind && c.name.eq_ignore_ascii_case(name)),
        }?;
        match node {
            NodeRef::VmssInstance { instance, .. } if *instance >= c.instances => None,
            _ => Some(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn node_refs_parse_from_flags() {
        assert_eq!("vm:node1".parse::<NodeRef>().unwrap(), NodeRef::vm("node1"));
        assert_eq!("vmss:rg/ss:3".parse::<NodeRef>().unwrap(), NodeRef::vmss_instance("ss", 3).in_resource_group("rg"));
        assert!("vmss:ss".parse::<NodeRef>().is_err());
        assert!("node1".parse::<NodeRef>().is_err());
    }

    #[test]
    fn a_vmss_instance_beyond_capacity_is_not_a_node() {
        let (s, _, _) = world();
        assert!(s.node_compute(&NodeRef::vmss_instance("ss", 1)).is_some());
        assert!(s.node_compute(&NodeRef::vmss_instance("ss", 2)).is_none());
    }
}
