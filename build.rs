//! Embeds every `rules/*.toml` into the binary so the proxy starts with the default pack and no
//! files on disk. The list is generated rather than hand-written so a new rule file cannot be
//! forgotten.
use std::{env, fs, path::Path};

fn main() {
    let rules_dir = Path::new("rules");
    println!("cargo:rerun-if-changed=rules");
    let mut files: Vec<_> = fs::read_dir(rules_dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut generated = String::from("pub static EMBEDDED_RULE_FILES: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 rule file name");
        // Resolved against the manifest dir when the crate compiles, not when this script ran:
        // two clones sharing one target dir reuse this output, and each must embed its own rules.
        generated.push_str(&format!(
            "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/rules/{name}\"))),\n"
        ));
    }
    generated.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("embedded_rules.rs");
    fs::write(out, generated).expect("write embedded_rules.rs");
}
