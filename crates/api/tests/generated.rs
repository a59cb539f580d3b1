//! Checked-in generated files must match what the types generate today.

#[test]
fn deploy_crds_yaml_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap();
    let generated = aadpodid_api::crd_yaml().unwrap();
    assert!(
        checked_in == generated,
        "deploy/crds.yaml is out of date with the types in crates/api; run `hack/generate.sh` \
         (or `cargo run -q -p aadpodid-api --bin crdgen > deploy/crds.yaml`) and commit the result"
    );
}
