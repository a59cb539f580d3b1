//! Prints the four CRDs as one multi-document YAML stream (`deploy/crds.yaml`, chart `crds/`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", aadpodid_api::crd_yaml()?);
    Ok(())
}
