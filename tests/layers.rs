//! Enforces the crate's layer order, read straight from the source files under `src/`.
//!
//! Every top-level module (a file or folder directly under `src/`) is a layer, listed bottom to
//! top in [`LAYERS`]. A layer may import only layers below it, so imports point one way only.
//! That is what keeps the engine ignorant of HTTP (it sits below everything that speaks it) and
//! makes observe read an `Exchange` rather than a Pingora type (it sits below the proxy glue). A
//! wrong-way `use` compiles fine, which is why this test exists. It also fails on cycles between
//! layers (reported apart from order breaks: a cycle is the worse smell), on modules the list
//! does not know, on folders without a documented `mod.rs`, and on a `src/` that grows flat again.
//!
//! The check only reads files (a small lexer, no `syn`), so it does not depend on the crate
//! compiling. `LAYERS_SRC_DIR` points it at another source tree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom to top. A module may refer only to modules earlier in this list.
const LAYERS: &[&str] = &[
    "config_error",
    "engine",
    "anthropic",
    "policy",
    "exchange",
    "observe",
    "config",
    "proxy",
    "app",
];

/// Layers that must not name the HTTP stack: the engine knows nothing of HTTP, and the exchange
/// record and observability read a request's record, never a Pingora type (the proxy translates
/// Pingora's errors into the exchange's own types).
const NO_HTTP_STACK: &[&str] = &[
    "config_error",
    "engine",
    "anthropic",
    "exchange",
    "observe",
    "config",
];

/// The HTTP stack's crates, as a path names them.
const HTTP_STACK: &[&str] = &["pingora", "pingora_core", "pingora_proxy", "http", "hyper"];

/// The crate roots plus a few leaf layers; anything beyond that belongs in a layer folder.
const MAX_FLAT_FILES: usize = 6;

const CRATE_ROOTS: &[&str] = &["lib.rs", "main.rs"];

#[test]
fn layers_point_one_way() {
    let src = std::env::var_os("LAYERS_SRC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src")));
    let problems = check_tree(&src);
    assert!(
        problems.is_empty(),
        "\nlayer rules broken in {} ({} problem(s); the layer list lives in tests/layers.rs):\n{}\n",
        src.display(),
        problems.len(),
        problems.join("\n")
    );
}

/// Everything wrong with the tree under `src`, one line per problem.
fn check_tree(src: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let tree = scan(src);

    if tree.flat_files.len() > MAX_FLAT_FILES {
        problems.push(format!(
            "too flat: src/ holds {} .rs files directly (at most {MAX_FLAT_FILES}, crate roots \
             included): {}",
            tree.flat_files.len(),
            tree.flat_files.join(", ")
        ));
    }

    for (module, at) in &tree.modules {
        if !LAYERS.contains(&module.as_str()) {
            problems.push(format!(
                "unknown module: `{module}` ({at}) is not in the layer list (LAYERS in \
                 tests/layers.rs); move it into a layer or add it to the list"
            ));
        }
    }

    for dir in &tree.folders {
        let mod_rs = src.join(dir).join("mod.rs");
        let shown = format!("src/{}", slashed(dir));
        match fs::read_to_string(&mod_rs) {
            Err(_) => problems.push(format!(
                "undocumented folder: {shown}/ has no mod.rs (it must open with a //! doc saying \
                 what the folder owns and what it may import)"
            )),
            Ok(text) if !opens_with_module_doc(&text) => problems.push(format!(
                "undocumented folder: {shown}/mod.rs does not open with a //! module doc"
            )),
            Ok(_) => {}
        }
    }

    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    for file in &tree.files {
        let text = fs::read_to_string(src.join(&file.rel))
            .unwrap_or_else(|e| panic!("reading src/{}: {e}", slashed(&file.rel)));
        let here = &file.module_path[0];
        if NO_HTTP_STACK.contains(&here.as_str()) {
            for (krate, line) in external_crates(&text) {
                if HTTP_STACK.contains(&krate.as_str()) {
                    problems.push(format!(
                        "HTTP stack below the proxy: {here} names `{krate}` (src/{}:{line})",
                        slashed(&file.rel)
                    ));
                }
            }
        }
        for (target, line) in references(&text, &file.module_path) {
            // Names that are not modules are items of the crate root (lib.rs), which is not a layer.
            if &target == here || !tree.modules.contains_key(&target) {
                continue;
            }
            edges
                .entry((here.clone(), target))
                .or_insert_with(|| format!("src/{}:{line}", slashed(&file.rel)));
        }
    }

    for ((from, to), at) in &edges {
        // Edges touching unknown modules have no order; they still count towards cycles.
        if matches!((rank(from), rank(to)), (Some(f), Some(t)) if t > f) {
            problems.push(format!("against the layer order: {from} -> {to} ({at})"));
        }
    }

    let modules: BTreeSet<String> = tree.modules.keys().cloned().collect();
    for Cycle { path, component } in cycles(&modules, &edges) {
        let evidence: Vec<_> = path
            .windows(2)
            .map(|w| edges[&(w[0].clone(), w[1].clone())].as_str())
            .collect();
        let mut line = format!("cycle: {} ({})", path.join(" -> "), evidence.join(", "));
        // One cycle stands for its whole component; name the rest so none of it is hidden.
        let rest: Vec<_> = component
            .iter()
            .filter(|m| !path.contains(m))
            .map(String::as_str)
            .collect();
        if !rest.is_empty() {
            line += &format!("; tangled in the same cycle group: {}", rest.join(", "));
        }
        problems.push(line);
    }

    problems
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

fn slashed(path: &Path) -> String {
    let parts: Vec<_> = path.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

fn opens_with_module_doc(text: &str) -> bool {
    let text = text.trim_start_matches('\u{feff}');
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty()).peekable();
    if !lines
        .peek()
        .is_some_and(|l| l.trim_start().starts_with("//!"))
    {
        return false;
    }
    lines
        .map_while(|l| l.trim_start().strip_prefix("//!"))
        .any(|doc| !doc.trim().is_empty())
}

struct SourceFile {
    /// Relative to the source root.
    rel: PathBuf,
    /// The module the file defines, from the crate root: `engine/rules.rs` is `[engine, rules]`.
    module_path: Vec<String>,
}

#[derive(Default)]
struct Tree {
    files: Vec<SourceFile>,
    /// Top-level module name -> where it lives, for messages.
    modules: BTreeMap<String, String>,
    /// Every folder (relative to the source root) that holds Rust sources.
    folders: Vec<PathBuf>,
    /// Names of the `.rs` files directly in the source root, crate roots included.
    flat_files: Vec<String>,
}

fn scan(src: &Path) -> Tree {
    let mut tree = Tree::default();
    for entry in sorted_entries(src) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if entry.is_dir() {
            // Cargo builds src/bin/*.rs as separate crates, where `crate::` means something else.
            if name == "bin" {
                continue;
            }
            let before = tree.files.len();
            walk_folder(src, Path::new(&name), &mut tree);
            if tree.files.len() > before {
                tree.modules.insert(name.clone(), format!("src/{name}/"));
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            tree.flat_files.push(name.clone());
            if CRATE_ROOTS.contains(&name.as_str()) {
                continue;
            }
            tree.modules.insert(stem.to_string(), format!("src/{name}"));
            tree.files.push(SourceFile {
                rel: PathBuf::from(&name),
                module_path: vec![stem.to_string()],
            });
        }
    }
    tree
}

fn walk_folder(src: &Path, rel: &Path, tree: &mut Tree) {
    let before = tree.files.len();
    let folder_at = tree.folders.len();
    for entry in sorted_entries(&src.join(rel)) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        let child = rel.join(&name);
        if entry.is_dir() {
            walk_folder(src, &child, tree);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module_path: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if stem != "mod" {
                module_path.push(stem.to_string());
            }
            tree.files.push(SourceFile {
                rel: child,
                module_path,
            });
        }
    }
    // Folders without Rust sources (fixtures, data) are not modules.
    if tree.files.len() > before {
        tree.folders.insert(folder_at, rel.to_path_buf());
    }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let read = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut entries: Vec<PathBuf> = read.map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries
}

#[derive(Debug, PartialEq)]
struct Cycle {
    /// Starts and ends at the same module.
    path: Vec<String>,
    /// The whole strongly connected component the cycle was taken from.
    component: Vec<String>,
}

/// One cycle per strongly connected component, each starting and ending at the component's
/// lowest layer (unknown modules sort last, by name).
fn cycles(modules: &BTreeSet<String>, edges: &BTreeMap<(String, String), String>) -> Vec<Cycle> {
    let mut nodes: Vec<&String> = modules.iter().collect();
    nodes.sort_by_key(|m| (rank(m).unwrap_or(usize::MAX), m.as_str()));
    let index: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut succ = vec![Vec::new(); nodes.len()];
    for (from, to) in edges.keys() {
        succ[index[from.as_str()]].push(index[to.as_str()]);
    }

    let mut found = Vec::new();
    for component in strongly_connected(&succ) {
        if component.len() < 2 {
            continue;
        }
        let inside: BTreeSet<usize> = component.into_iter().collect();
        let start = *inside.first().unwrap();
        // Breadth-first, so the reported cycle is a shortest one through `start`.
        let mut parent = vec![None; nodes.len()];
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(n) = queue.pop_front() {
            for &m in &succ[n] {
                if m == start {
                    last = Some(n);
                    break 'search;
                }
                if inside.contains(&m) && parent[m].is_none() {
                    parent[m] = Some(n);
                    queue.push_back(m);
                }
            }
        }
        let mut path = vec![start];
        let mut at = last.expect("a strongly connected component has a cycle");
        while at != start {
            path.push(at);
            at = parent[at].unwrap();
        }
        path.push(start);
        path.reverse();
        found.push(Cycle {
            path: path.into_iter().map(|i| nodes[i].clone()).collect(),
            component: inside.into_iter().map(|i| nodes[i].clone()).collect(),
        });
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Tarjan's algorithm.
fn strongly_connected(succ: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'g> {
        succ: &'g [Vec<usize>],
        next: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        out: Vec<Vec<usize>>,
    }

    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.succ[v].iter() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }

    let n = succ.len();
    let mut s = State {
        succ,
        next: 0,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

// ---------------------------------------------------------------------------------------------
// Extractor: a lexer that drops comments and literals, then a walk over `crate::`, `super::`
// and `self::` paths that resolves each to the top-level module it lands in.

#[derive(PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A string, char or number literal. Kept as a token so that neighbours stay apart.
    Literal,
}

struct Token {
    tok: Tok,
    line: usize,
}

fn lex(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            let start = line;
            i = skip_quoted(&c, i, '"', &mut line);
            out.push(Token {
                tok: Tok::Literal,
                line: start,
            });
        } else if ch == '\'' {
            if at(i + 1) == '\\' || (at(i + 1) != '\0' && at(i + 2) == '\'') {
                i = skip_quoted(&c, i, '\'', &mut line);
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
            } else {
                // A lifetime or loop label: `'a`, `'static`, `'outer:`.
                i += 1;
                while i < c.len() && is_ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Literal,
                line,
            });
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if matches!(word.as_str(), "r" | "br" | "cr") && raw_string_ahead(&c, i) {
                // Raw strings have no escapes and may hold bare quotes, so they need their own scan.
                out.push(Token {
                    tok: Tok::Literal,
                    line,
                });
                i = skip_raw_string(&c, i, &mut line);
            } else if word == "r" && at(i) == '#' && is_ident_start(at(i + 1)) {
                // A raw identifier, `r#type`: the identifier is what follows the `#`.
                let s = i + 1;
                i = s;
                while i < c.len() && is_ident_char(c[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(c[s..i].iter().collect()),
                    line,
                });
            } else {
                // `b"…"`, `c"…"` and `b'…'` come out as a prefix identifier then an ordinary
                // literal, which hides their contents just as well.
                out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                });
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident_start(ch: char) -> bool {
    ch == '_' || ch.is_alphabetic()
}

fn is_ident_char(ch: char) -> bool {
    ch == '_' || ch.is_alphanumeric()
}

/// Skips a `"…"` or `'…'` literal whose opening quote is at `i`; returns the index after it.
fn skip_quoted(c: &[char], mut i: usize, quote: char, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '\n' => {
                *line += 1;
                i += 1;
            }
            ch if ch == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// At `i` there are `#`s; a raw string follows if they end in a `"`.
fn raw_string_ahead(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// Skips `#…#"…"#…#` starting at `i` (just after the `r`); returns the index after it.
fn skip_raw_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < c.len() {
        if c[i] == '\n' {
            *line += 1;
        }
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Every top-level module that `text` refers to, with the line of the reference. `module_path`
/// is the module the file defines (`src/engine/rules.rs` is `["engine", "rules"]`); it anchors
/// `super::` and `self::`.
fn references(text: &str, module_path: &[String]) -> Vec<(String, usize)> {
    let toks = lex(text);
    let mut out = Vec::new();
    let mut here: Vec<String> = module_path.to_vec();
    // Inline `mod name { … }` blocks move `super::` one level down; remember where each closes.
    let mut open_mods: Vec<usize> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        // The walk consumes whole paths, so a `self`/`super` seen here always starts one.
        let starts_path = toks.get(i + 1).map(|t| &t.tok) == Some(&Tok::PathSep);
        match &toks[i].tok {
            Tok::Ident(w) if starts_path && matches!(w.as_str(), "crate" | "super" | "self") => {
                let base = match w.as_str() {
                    "crate" => Vec::new(),
                    "super" => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.clone(),
                };
                i = walk_path(&toks, i + 2, base, &mut out);
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) = (
                    toks.get(i + 1).map(|t| &t.tok),
                    toks.get(i + 2).map(|t| &t.tok),
                ) {
                    pending_mod = Some(name.clone());
                }
            }
            Tok::Punct('{') => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    here.push(name);
                    open_mods.push(depth);
                }
            }
            Tok::Punct('}') => {
                if open_mods.last() == Some(&depth) {
                    open_mods.pop();
                    here.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The first segment of every path that names another crate (`pingora::…`, `use http::…`): an
/// identifier followed by `::` that does not itself follow `::` and is not a path keyword.
fn external_crates(text: &str) -> Vec<(String, usize)> {
    let toks = lex(text);
    let mut out = Vec::new();
    for (i, token) in toks.iter().enumerate() {
        let Tok::Ident(name) = &token.tok else {
            continue;
        };
        let follows_sep = i > 0 && toks[i - 1].tok == Tok::PathSep;
        let starts_path = toks.get(i + 1).map(|t| &t.tok) == Some(&Tok::PathSep);
        let keyword = matches!(name.as_str(), "crate" | "super" | "self" | "Self");
        if starts_path && !follows_sep && !keyword {
            out.push((name.clone(), token.line));
        }
    }
    out
}

/// Walks a path from the segment at `i`, resolved against `base`, recording the top-level module
/// each branch lands in. Returns the index after the path.
fn walk_path(
    toks: &[Token],
    mut i: usize,
    mut base: Vec<String>,
    out: &mut Vec<(String, usize)>,
) -> usize {
    while let Some(t) = toks.get(i) {
        match &t.tok {
            Tok::Ident(w) if w == "super" => {
                base.pop();
            }
            Tok::Ident(w) if w == "self" => {}
            Tok::Ident(w) => {
                base.push(w.clone());
                // The first segment below the crate root names the top-level module.
                if base.len() == 1 {
                    out.push((w.clone(), t.line));
                }
            }
            Tok::Punct('{') => return walk_group(toks, i + 1, &base, out),
            // `*`, generics (`::<T>`) and anything else end the path.
            _ => return i,
        }
        i += 1;
        if toks.get(i).map(|t| &t.tok) != Some(&Tok::PathSep) {
            return i;
        }
        i += 1;
    }
    i
}

/// `{a::b, c::{d, e}, f as g}` from just after the `{`: each element is a path of its own.
fn walk_group(
    toks: &[Token],
    mut i: usize,
    base: &[String],
    out: &mut Vec<(String, usize)>,
) -> usize {
    loop {
        match toks.get(i).map(|t| &t.tok) {
            None => return i,
            Some(Tok::Punct('}')) => return i + 1,
            Some(Tok::Punct(',')) => i += 1,
            _ => {
                i = walk_path(toks, i, base.to_vec(), out);
                // The walk consumed any nested group; what remains (`as name`, `*`) names nothing.
                while !matches!(
                    toks.get(i).map(|t| &t.tok),
                    None | Some(Tok::Punct(',' | '}'))
                ) {
                    i += 1;
                }
            }
        }
    }
}

#[test]
fn extractor_handles_tricky_syntax() {
    fn refs(text: &str, module: &str) -> Vec<String> {
        let path: Vec<String> = module.split('/').map(String::from).collect();
        references(text, &path)
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    // Grouped uses: each top-level element is a reference; nested groups belong to their element.
    assert_eq!(
        refs(
            "use crate::{engine::Rule, anthropic::{Route, sse::{Frame, Event}}, policy as p};",
            "proxy"
        ),
        ["engine", "anthropic", "policy"]
    );
    assert_eq!(
        refs("use crate::{self, config_error::ConfigError};", "engine"),
        ["config_error"]
    );
    assert_eq!(
        refs("use crate::engine::*; use crate::*;", "app"),
        ["engine"]
    );

    // Paths in expressions and types, including `$crate` in macros.
    assert_eq!(
        refs(
            "fn f(r: crate::engine::Rule) -> Vec<crate::anthropic::Usage> {\n\
             crate::policy::check::<u8>(r); $crate::observe::log!(); Self::new(); vec![] }",
            "proxy"
        ),
        ["engine", "anthropic", "policy", "observe"]
    );

    // `pub(crate)` and `extern crate` are not paths; `pub(in crate::x)` is.
    assert_eq!(
        refs(
            "pub(crate) fn f() {} pub(crate) struct S; extern crate self as sm;\n\
             pub(in crate::engine) fn g() {} pub(super) fn h() {}",
            "engine/rules"
        ),
        ["engine"]
    );

    // Comments, nested block comments and doc comments hide everything.
    assert_eq!(
        refs(
            "//! crate::app\n/// see [`crate::proxy`]\n// crate::config::x\n\
             /* crate::observe /* nested crate::exchange */ still crate::policy */\n\
             fn f() -> u8 { 1 } // crate::app",
            "engine"
        ),
        Vec::<String>::new()
    );

    // String literals of every kind hide their contents; `'"'` does not open a string.
    assert_eq!(
        refs(
            r####"
            let a = "crate::proxy::X \" crate::app";
            let b = r"crate::app";
            let c = r#"crate::app "quoted" crate::config"#;
            let c2 = r#"one "crate::config" two"#;
            let d = br##"crate::config "# crate::proxy"##;
            let e = b"crate::observe";
            let f = c"crate::observe";
            let g = '"'; let h = '\''; let i = b'\\'; let j = '\u{22}';
            let k = crate::engine::f(r#type);
            "####,
            "policy"
        ),
        ["engine"]
    );

    // Lifetimes and labels are not char literals, so they must not swallow what follows.
    assert_eq!(
        refs(
            "fn f<'a, 'b: 'a>(x: &'a str) -> &'a crate::engine::Rule { \
             'outer: loop { break 'outer; } } impl<'a> T<'a> for crate::anthropic::U<'static> {}",
            "policy"
        ),
        ["engine", "anthropic"]
    );

    // `super::` from a file directly under src/ is the crate root; inside an inline module it is
    // the file's own module; `super::super::` climbs further.
    assert_eq!(
        refs(
            "use super::exchange::Exchange; use super::*; use super::{engine::Rule, self};\n\
             #[cfg(test)] mod tests { use super::record; use super::super::config_error::E; }\n\
             fn after() { super::policy::p(); }",
            "observe"
        ),
        ["exchange", "engine", "config_error", "policy"]
    );
    assert_eq!(
        refs(
            "use super::matcher::M; use super::super::anthropic::X; use self::super::Y;\n\
             mod a { mod b { use super::super::super::super::policy::P; } }",
            "engine/rules"
        ),
        ["anthropic", "policy"]
    );
    assert_eq!(
        refs("use super::{super::app::Cli, x};", "proxy/http"),
        ["app"]
    );

    // Lines point at the element, not at the start of the `use`.
    let lines: Vec<usize> = references(
        "use crate::{\n    engine::Rule,\n    /* crate::app */\n    anthropic::Route,\n};",
        &["proxy".to_string()],
    )
    .into_iter()
    .map(|(_, l)| l)
    .collect();
    assert_eq!(lines, [2, 4]);
}

#[test]
fn other_crates_are_named_by_their_first_segment() {
    let text = "use pingora::proxy::Session;\n\
                // http::Request in a comment\n\
                fn f() -> http::HeaderMap { crate::x::y(); Self::new(); std::mem::take(a) }\n\
                let s = \"hyper::Body\";\n";
    let crates: Vec<(String, usize)> = external_crates(text);
    let names: Vec<&str> = crates.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, ["pingora", "http", "std"]);
    assert_eq!(crates[1].1, 3);
}

#[test]
fn cycles_are_found_per_component() {
    let modules: BTreeSet<String> = ["engine", "anthropic", "policy", "zeta", "audit"]
        .into_iter()
        .map(String::from)
        .collect();
    let edges: BTreeMap<(String, String), String> = [
        ("engine", "anthropic"),
        ("anthropic", "policy"),
        ("policy", "engine"),
        ("anthropic", "engine"),
        ("zeta", "audit"),
        ("audit", "zeta"),
    ]
    .into_iter()
    .map(|(a, b)| ((a.to_string(), b.to_string()), String::new()))
    .collect();
    let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        cycles(&modules, &edges),
        [
            Cycle {
                path: owned(&["audit", "zeta", "audit"]),
                component: owned(&["audit", "zeta"]),
            },
            Cycle {
                path: owned(&["engine", "anthropic", "engine"]),
                component: owned(&["engine", "anthropic", "policy"]),
            },
        ]
    );
}
