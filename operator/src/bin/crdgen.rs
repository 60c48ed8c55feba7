//! Writes the generated CRDs into `crds/` and `charts/quiver/crds/` (run from the repository root).

fn main() -> std::io::Result<()> {
    for dir in ["crds", "charts/quiver/crds"] {
        std::fs::create_dir_all(dir)?;
        for (name, yaml) in quiver_operator::crdgen::render() {
            std::fs::write(format!("{dir}/{name}"), yaml)?;
        }
    }
    Ok(())
}
