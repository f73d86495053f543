//! Embeds the default rule pack into the binary twice over:
//! - every `rules/*.toml` as text, so the proxy starts with the default pack and no files on
//!   disk (the list is generated rather than hand-written so a new rule file cannot be
//!   forgotten);
//! - the pack compiled into a Hyperscan block and a streaming database for generic x86-64, so
//!   a cold start loads them in milliseconds instead of compiling for seconds. Each is keyed
//!   by `src/engine/database_key.rs` over exactly the expressions it was compiled from; the
//!   runtime uses it only when its own key for the pack it loaded is the same, so a stale or
//!   missing embedded database costs start-up time, never correctness.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

#[path = "src/engine/database_key.rs"]
mod database_key;

fn main() {
    let rules_dir = Path::new("rules");
    println!("cargo:rerun-if-changed=rules");
    println!("cargo:rerun-if-changed=src/engine/database_key.rs");
    let mut files: Vec<_> = fs::read_dir(rules_dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
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
    fs::write(out_dir.join("embedded_rules.rs"), generated).expect("write embedded_rules.rs");
    let patterns = pack_patterns(&files);
    let databases = match patterns
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|p| compile_pack(p, &out_dir))
    {
        Ok(entries) => entries,
        Err(why) => {
            // The runtime parser reports broken rule files properly; without embedded
            // databases the binary still works, it compiles at start-up.
            println!("cargo:warning=default pack not embedded as Hyperscan databases: {why}");
            Vec::new()
        }
    };
    let mut generated = String::from("pub static EMBEDDED_DATABASES: &[([u8; 32], &[u8])] = &[\n");
    for (key, file) in databases {
        generated.push_str(&format!(
            "    ({key:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))),\n"
        ));
    }
    generated.push_str("];\n");
    // Each expression's match widths, which the matcher needs per rule and Hyperscan computes
    // with a partial compile (half of a cold start when done for every rule at run time).
    generated.push_str(&format!(
        "pub static EMBEDDED_HYPERSCAN_VERSION: &str = {:?};\n",
        hyperscan::version_str().to_string_lossy()
    ));
    generated.push_str("pub static EMBEDDED_WIDTHS: &[(&str, usize, usize)] = &[\n");
    for PackRule { pattern, .. } in patterns.iter().flatten() {
        if let Some((min, max)) = widths(pattern) {
            generated.push_str(&format!("    ({pattern:?}, {min}, {max}),\n"));
        }
    }
    generated.push_str("];\n");
    fs::write(out_dir.join("embedded_databases.rs"), generated)
        .expect("write embedded_databases.rs");
}

/// Hyperscan's (minimum, maximum) match width of `expression`; `None` when it refuses it (the
/// runtime then reports why).
fn widths(expression: &str) -> Option<(usize, usize)> {
    use hyperscan::prelude::*;
    let pattern = Pattern {
        expression: expression.to_string(),
        flags: CompileFlags::empty(),
        id: Some(0),
        ext: Default::default(),
        som: None,
    };
    let info = pattern.info().ok()?;
    Some((info.min_width(), info.max_width()))
}

/// One rule of the pack as the databases see it.
struct PackRule {
    pattern: String,
    /// What Hyperscan runs instead of `pattern`, if set: the key word, else the prefilter.
    prefilter: Option<String>,
    /// Whether `prefilter` is a key word (rules sharing one are reported under the first's id).
    keyword: bool,
    enabled: bool,
}

/// Every rule of the pack, in the order the runtime numbers them: files sorted by name, rules
/// in file order.
fn pack_patterns(files: &[PathBuf]) -> Result<Vec<PackRule>, String> {
    let mut patterns = Vec::new();
    for path in files {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(rules) = table.get("rules").and_then(|r| r.as_array()) else {
            continue;
        };
        for rule in rules {
            let pattern = rule
                .get("pattern")
                .and_then(|p| p.as_str())
                .ok_or_else(|| format!("{}: a rule without a pattern", path.display()))?;
            let enabled = rule
                .get("enabled")
                .and_then(|e| e.as_bool())
                .unwrap_or(true);
            let keyword = rule.get("keyword").is_some();
            let prefilter = rule
                .get("keyword")
                .or_else(|| rule.get("prefilter"))
                .and_then(|p| p.as_str())
                .map(str::to_string);
            patterns.push(PackRule {
                pattern: pattern.to_string(),
                prefilter,
                keyword,
                enabled,
            });
        }
    }
    Ok(patterns)
}

/// The databases of the default configuration: the enabled rules, each with its index as id (a
/// disabled rule is compiled only when a profile turns it on, and the runtime then compiles
/// databases of its own).
fn compile_pack(rules: &[PackRule], out_dir: &Path) -> Result<Vec<([u8; 32], String)>, String> {
    use hyperscan::prelude::*;
    use hyperscan::{CompileFlags, CpuFeatures, Platform, Tune};
    if !rules.iter().any(|rule| rule.enabled) {
        return Ok(Vec::new());
    }
    // As the matcher does: a key word goes in once, under the first rule that has it.
    let mut keywords = std::collections::HashSet::new();
    let patterns = Patterns(
        rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| rule.enabled)
            .filter(|(_, rule)| !rule.keyword || keywords.insert(rule.prefilter.clone()))
            .map(|(id, rule)| Pattern {
                expression: rule.prefilter.as_ref().unwrap_or(&rule.pattern).clone(),
                flags: CompileFlags::empty(),
                id: Some(id),
                ext: Default::default(),
                som: None,
            })
            .collect(),
    );
    let keyed = || {
        patterns.iter().map(|p| database_key::KeyedPattern {
            id: p.id.unwrap_or(0),
            flags: p.flags.bits(),
            expression: &p.expression,
        })
    };
    let version = hyperscan::version_str().to_bytes();
    let generic = Platform::new(Tune::Generic, CpuFeatures::empty());
    let block: BlockDatabase = patterns
        .for_platform(Some(&generic))
        .map_err(|e| format!("block: {e}"))?;
    let stream: StreamingDatabase = patterns
        .for_platform(Some(&generic))
        .map_err(|e| format!("streaming: {e}"))?;
    let mut entries = Vec::new();
    for (mode, bytes) in [
        ("block", block.serialize().map_err(|e| e.to_string())?),
        ("stream", stream.serialize().map_err(|e| e.to_string())?),
    ] {
        let file = format!("pack.{mode}.hsdb");
        fs::write(out_dir.join(&file), &bytes[..]).map_err(|e| e.to_string())?;
        entries.push((database_key::database_key(version, mode, keyed()), file));
    }
    Ok(entries)
}
