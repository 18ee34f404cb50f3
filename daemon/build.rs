//! Embeds `migrations/NNNN_name.sql` into the daemon, in order.
//! A gap or a duplicate number fails the build: the store applies migrations
//! by number and records the last one in `PRAGMA user_version`.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut found: Vec<(u32, String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("migrations/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "sql") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (num, name) = stem
            .split_once('_')
            .unwrap_or_else(|| panic!("migration {stem}: expected NNNN_name.sql"));
        let num: u32 = num
            .parse()
            .unwrap_or_else(|_| panic!("migration {stem}: expected NNNN_name.sql"));
        println!("cargo:rerun-if-changed={}", path.display());
        found.push((num, name.to_owned(), path.canonicalize().unwrap()));
    }
    found.sort();
    for (i, (num, name, _)) in found.iter().enumerate() {
        assert_eq!(
            *num as usize,
            i + 1,
            "migration {num}_{name}: numbers must be 1, 2, 3, ..."
        );
    }
    let mut out = String::from("pub(crate) const MIGRATIONS: &[(u32, &str, &str)] = &[\n");
    for (num, name, path) in &found {
        writeln!(
            out,
            "    ({num}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
