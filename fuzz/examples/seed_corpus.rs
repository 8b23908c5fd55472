//! Write the seed corpus for the `mutate` fuzz target.
//!
//! cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus -- ../shared/corpus fuzz/corpus/mutate
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let corpus = args.next().unwrap_or_else(|| "../shared/corpus".into());
    let out = args.next().unwrap_or_else(|| "fuzz/corpus/mutate".into());
    std::fs::create_dir_all(&out)?;
    let seeds = calmplane_fuzz::seeds::seeds(&corpus)?;
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
