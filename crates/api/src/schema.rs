//! The CRD manifests: names, scope and printer columns come from the kube derives on the
//! types; the OpenAPI schemas are written here to match the original's controller-gen output
//! field for field (types only, no required fields, no status subresource), plus the legacy
//! capitalised names so the API server does not prune them.
//!
//! `crdgen` prints these; a test compares them with the checked-in copies.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use kube::CustomResourceExt;
use serde_json::{Map, Value, json};

use crate::{AzureAssignedIdentity, AzureIdentity, AzureIdentityBinding, AzurePodIdentityException};

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// All four CRDs, in the order the original's `crd.yaml` lists them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        finish(AzureAssignedIdentity::crd(), assigned_schema(), None),
        finish(AzureIdentity::crd(), identity_schema(), Some(CustomResourceSubresources::default())),
        finish(AzureIdentityBinding::crd(), binding_schema(), Some(CustomResourceSubresources::default())),
        finish(AzurePodIdentityException::crd(), exception_schema(), None),
    ]
}

/// Sets the schema and the original's subresources (none, or an empty `{}`; never `status`,
/// because the original writes status through the main resource).
fn finish(
    mut crd: CustomResourceDefinition,
    schema: Value,
    subresources: Option<CustomResourceSubresources>,
) -> CustomResourceDefinition {
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("api-approved.kubernetes.io".into(), "unapproved".into());
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        let props: JSONSchemaProps =
            serde_json::from_value(schema.clone()).expect("schema literals are valid JSONSchemaProps");
        version.schema = Some(CustomResourceValidation { open_api_v3_schema: Some(props) });
        version.subresources = subresources.clone();
    }
    crd
}

fn string(description: Option<&str>) -> Value {
    with_description(json!({"type": "string"}), description)
}

fn int32(nullable: bool) -> Value {
    let mut v = json!({"type": "integer", "format": "int32"});
    if nullable {
        v["nullable"] = json!(true);
    }
    v
}

fn object(description: Option<&str>, properties: Value) -> Value {
    with_description(json!({"type": "object", "properties": properties}), description)
}

fn with_description(mut v: Value, description: Option<&str>) -> Value {
    if let Some(d) = description {
        v["description"] = json!(d);
    }
    v
}

fn legacy(of: &str) -> String {
    format!("Pre-1.6 spelling of {of}, read when {of} is absent. Deprecated: write {of}.")
}

/// A whole object: apiVersion, kind, metadata, spec and status.
fn resource(description: &str, spec: Value, status: Value) -> Value {
    object(
        Some(description),
        json!({
            "apiVersion": string(Some(API_VERSION_DOC)),
            "kind": string(Some(KIND_DOC)),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        }),
    )
}

fn secret_reference(description: &str) -> Value {
    object(
        Some(description),
        json!({
            "name": string(Some("Name is unique within a namespace to reference a secret resource.")),
            "namespace": string(Some("Namespace defines the space within which the secret name must be unique.")),
        }),
    )
}

fn replica_status(description: &str) -> Value {
    object(Some(description), json!({"availableReplicas": int32(false), "metadata": {"type": "object"}}))
}

fn identity_spec() -> Value {
    let mut props = json!({
        "adEndpoint": string(None),
        "adResourceID": string(Some("For service principal. Option param for specifying the  AD details.")),
        "auxiliaryTenantIDs": {
            "description": "Service principal auxiliary tenant ids",
            "items": {"type": "string"}, "nullable": true, "type": "array"
        },
        "clientID": string(Some("Both User Assigned MSI and SP can use this field.")),
        "clientPassword": secret_reference("Used for service principal"),
        "metadata": {"type": "object"},
        "replicas": int32(true),
        "resourceID": string(Some("User assigned MSI resource id.")),
        "tenantID": string(Some("Service principal primary tenant id.")),
        "type": {"description": "UserAssignedMSI or Service Principal", "type": "integer"},
    });
    let extra: &mut Map<String, Value> = props.as_object_mut().expect("object literal");
    extra.insert("ClientID".into(), string(Some(&legacy("clientID"))));
    extra.insert("ResourceID".into(), string(Some(&legacy("resourceID"))));
    extra.insert("TenantID".into(), string(Some(&legacy("tenantID"))));
    extra.insert("ClientPassword".into(), secret_reference(&legacy("clientPassword")));
    object(Some("AzureIdentitySpec describes the credential specifications of an identity on Azure."), props)
}

fn binding_spec() -> Value {
    object(
        Some(
            "AzureIdentityBindingSpec matches the pod with the Identity. Used to indicate the potential matches to look for between the pod/deployment and the identities present.",
        ),
        json!({
            "azureIdentity": string(None),
            "metadata": {"type": "object"},
            "selector": string(None),
            "weight": {"description": "Weight is used to figure out which of the matching identities would be selected.", "type": "integer"},
            "AzureIdentity": string(Some(&legacy("azureIdentity"))),
            "Selector": string(Some(&legacy("selector"))),
        }),
    )
}

fn identity_schema() -> Value {
    resource(
        "AzureIdentity is the specification of the identity data structure.",
        identity_spec(),
        replica_status("AzureIdentityStatus contains the replica status of the resource."),
    )
}

fn binding_schema() -> Value {
    resource(
        "AzureIdentityBinding brings together the spec of matching pods and the identity which they can use.",
        binding_spec(),
        replica_status("AzureIdentityBindingStatus contains the status of an AzureIdentityBinding."),
    )
}

fn embedded(description: &str, mut whole: Value) -> Value {
    whole["description"] = json!(description);
    whole["x-kubernetes-embedded-resource"] = json!(true);
    whole
}

fn assigned_schema() -> Value {
    resource(
        "AzureAssignedIdentity contains the identity <-> pod mapping which is matched.",
        object(
            Some(
                "AzureAssignedIdentitySpec contains the relationship between an AzureIdentity and an AzureIdentityBinding.",
            ),
            json!({
                "azureBindingRef": embedded(
                    "AzureBindingRef is an embedded resource referencing the AzureIdentityBinding used by the AzureAssignedIdentity, which requires x-kubernetes-embedded-resource fields to be true",
                    binding_schema(),
                ),
                "azureIdentityRef": embedded(
                    "AzureIdentityRef is an embedded resource referencing the AzureIdentity used by the AzureAssignedIdentity, which requires x-kubernetes-embedded-resource fields to be true",
                    identity_schema(),
                ),
                "metadata": {"type": "object"},
                "nodename": string(None),
                "pod": string(None),
                "podNamespace": string(None),
                "replicas": int32(true),
            }),
        ),
        object(
            Some("AzureAssignedIdentityStatus contains the replica status of the resource."),
            json!({"availableReplicas": int32(false), "metadata": {"type": "object"}, "status": string(None)}),
        ),
    )
}

fn exception_schema() -> Value {
    let labels = |d: &str| json!({"additionalProperties": {"type": "string"}, "description": d, "type": "object"});
    resource(
        "AzurePodIdentityException contains the pod selectors for all pods that don't require NMI to process and request token on their behalf.",
        object(
            Some(
                "AzurePodIdentityExceptionSpec matches pods with the selector defined. If request originates from a pod that matches the selector, nmi will proxy the request and send response back without any validation.",
            ),
            json!({
                "metadata": {"type": "object"},
                "podLabels": labels("PodLabels is a map of pod labels."),
                "PodLabels": labels(&legacy("podLabels")),
            }),
        ),
        object(
            Some("AzurePodIdentityExceptionStatus contains the status of an AzurePodIdentityException."),
            json!({"metadata": {"type": "object"}, "status": string(None)}),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AzureAssignedIdentitySpec, AzureIdentityBindingSpec, AzureIdentitySpec, AzurePodIdentityExceptionSpec,
    };
    use k8s_openapi::api::core::v1::SecretReference;

    fn props(crd: &CustomResourceDefinition) -> JSONSchemaProps {
        crd.spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap()
    }

    /// Every key `value` carries must be declared at the same place in `schema`, or the API
    /// server would prune it: the schema and the types must not drift apart.
    fn assert_declared(schema: &JSONSchemaProps, value: &Value, path: &str) {
        let Value::Object(map) = value else { return };
        if schema.properties.is_none() {
            return; // free-form (labels) or a pruned object such as spec.metadata
        }
        for (key, child) in map {
            let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(key)) else {
                panic!("{path}.{key} is written by our types but missing from the CRD schema");
            };
            assert_declared(sub, child, &format!("{path}.{key}"));
        }
    }

    fn full_identity() -> AzureIdentity {
        AzureIdentity::new(
            "id",
            AzureIdentitySpec {
                metadata: Some(Default::default()),
                type_: Some(1),
                resource_id: Some("r".into()),
                client_id: Some("c".into()),
                client_password: Some(SecretReference { name: Some("s".into()), namespace: Some("n".into()) }),
                tenant_id: Some("t".into()),
                auxiliary_tenant_ids: Some(vec!["a".into()]),
                ad_resource_id: Some("x".into()),
                ad_endpoint: Some("e".into()),
                replicas: Some(1),
            },
        )
    }

    fn full_binding() -> AzureIdentityBinding {
        AzureIdentityBinding::new(
            "b",
            AzureIdentityBindingSpec {
                metadata: Some(Default::default()),
                azure_identity: Some("id".into()),
                selector: Some("s".into()),
                weight: Some(1),
            },
        )
    }

    #[test]
    fn every_field_the_types_write_is_in_the_schema() {
        let crds = crds();
        let mut identity = full_identity();
        identity.status = Some(crate::AzureIdentityStatus { metadata: None, available_replicas: Some(1) });
        assert_declared(&props(&crds[1]), &serde_json::to_value(&identity).unwrap(), "AzureIdentity");
        assert_declared(&props(&crds[2]), &serde_json::to_value(full_binding()).unwrap(), "AzureIdentityBinding");
        let assigned = AzureAssignedIdentity {
            spec: AzureAssignedIdentitySpec {
                metadata: None,
                azure_identity_ref: Some(Box::new(identity)),
                azure_binding_ref: Some(Box::new(full_binding())),
                pod: Some("p".into()),
                pod_namespace: Some("ns".into()),
                node_name: Some("n".into()),
                replicas: Some(1),
            },
            status: Some(crate::AzureAssignedIdentityStatus {
                metadata: None,
                status: Some("Assigned".into()),
                available_replicas: Some(1),
            }),
            ..AzureAssignedIdentity::new("a", Default::default())
        };
        assert_declared(&props(&crds[0]), &serde_json::to_value(&assigned).unwrap(), "AzureAssignedIdentity");
        let exception = AzurePodIdentityException::new(
            "e",
            AzurePodIdentityExceptionSpec { pod_labels: Some([("app".to_owned(), "mic".to_owned())].into()) },
        );
        assert_declared(&props(&crds[3]), &serde_json::to_value(&exception).unwrap(), "AzurePodIdentityException");
    }

    #[test]
    fn legacy_names_are_declared_so_they_survive_pruning() {
        let crds = crds();
        let spec = |crd: &CustomResourceDefinition| props(crd).properties.unwrap()["spec"].properties.clone().unwrap();
        for key in ["ResourceID", "ClientID", "TenantID", "ClientPassword", "resourceID", "clientID"] {
            assert!(spec(&crds[1]).contains_key(key), "{key}");
        }
        for key in ["AzureIdentity", "Selector"] {
            assert!(spec(&crds[2]).contains_key(key), "{key}");
        }
        assert!(spec(&crds[3]).contains_key("PodLabels"));
    }

    #[test]
    fn names_scope_columns_and_subresources_match_the_original() {
        let crds = crds();
        let names: Vec<_> = crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "azureassignedidentities.aadpodidentity.k8s.io",
                "azureidentities.aadpodidentity.k8s.io",
                "azureidentitybindings.aadpodidentity.k8s.io",
                "azurepodidentityexceptions.aadpodidentity.k8s.io",
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.scope, "Namespaced");
            assert!(crd.spec.names.short_names.is_none());
            assert_eq!(crd.spec.versions.len(), 1);
            let v = &crd.spec.versions[0];
            assert!(v.served && v.storage);
            assert!(v.subresources.as_ref().is_none_or(|s| s.status.is_none()), "no status subresource");
        }
        let columns = |i: usize| -> Vec<(String, String)> {
            crds[i].spec.versions[0]
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| (c.name.clone(), c.json_path.clone()))
                .collect()
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(n, p)| ((*n).to_owned(), (*p).to_owned())).collect()
        };
        // The original's columns first, then the pre-1.6 spellings (a column has one path).
        assert_eq!(
            columns(1),
            pairs(&[
                ("Type", ".spec.type"),
                ("ClientID", ".spec.clientID"),
                ("ClientID (pre-1.6)", ".spec.ClientID"),
                ("Age", ".metadata.creationTimestamp"),
            ])
        );
        assert_eq!(
            columns(2),
            pairs(&[
                ("AzureIdentity", ".spec.azureIdentity"),
                ("Selector", ".spec.selector"),
                ("AzureIdentity (pre-1.6)", ".spec.AzureIdentity"),
                ("Selector (pre-1.6)", ".spec.Selector"),
                ("Age", ".metadata.creationTimestamp"),
            ])
        );
        assert_eq!(
            columns(0),
            pairs(&[
                ("Pod", ".spec.pod"),
                ("PodNamespace", ".spec.podNamespace"),
                ("Identity", ".spec.azureIdentityRef.metadata.name"),
                ("Node", ".spec.nodename"),
                ("State", ".status.status"),
                ("Age", ".metadata.creationTimestamp"),
            ])
        );
        assert!(columns(3).is_empty());
        assert_eq!(crds[0].spec.names.singular.as_deref(), Some("azureassignedidentity"));
        assert_eq!(crds[0].spec.names.list_kind.as_deref(), Some("AzureAssignedIdentityList"));
    }
}
