//! Write the seed corpus for the `mutate` fuzz target, built from the
//! upstream fixtures in `tests/fixtures/upstream`.
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- fuzz/corpus/mutate
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let out = args.next().unwrap_or_else(|| "fuzz/corpus/mutate".into());
    std::fs::create_dir_all(&out)?;
    let seeds = calmplane_testkit::seeds::seeds()?;
    for (name, body) in &seeds {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_#".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(out.join(format!("{file}.json")), body)?;
    }
    eprintln!("wrote {} seeds to {}", seeds.len(), out.display());
    Ok(())
}
