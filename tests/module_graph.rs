//! The top-level modules of the library import one another without a
//! circle: each `crate::NAME` path in a module's non-test code is an edge,
//! and the graph they make must be acyclic (README, "Architecture", draws
//! it). Test code (`#[cfg(test)] mod … { … }` at the end of a file, and
//! `tests.rs` files) may reach anywhere to build fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, from `src/lib.rs`.
fn top_level_modules(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

/// Every `.rs` file of module `name` (`src/name.rs` or `src/name/**`),
/// without unit-test files.
fn files_of(src: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let single = src.join(format!("{name}.rs"));
    if single.is_file() {
        out.push(single);
    }
    let mut dirs = vec![src.join(name)];
    // Bounded: the source tree is a few levels deep.
    for _ in 0..16 {
        let Some(dir) = dirs.pop() else { break };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                out.push(p);
            }
        }
    }
    assert!(
        dirs.is_empty(),
        "source tree deeper than expected under {name}"
    );
    out
}

/// The lines of `text` that are not in its trailing test module, with
/// comments cut off.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim() == "#[cfg(test)]" {
            let next = lines[i + 1..].iter().position(|n| !n.trim().is_empty());
            if let Some(n) = next.map(|n| lines[i + 1 + n]) {
                let is_mod_block = !n.starts_with(' ')
                    && n.trim_end().ends_with('{')
                    && (n.starts_with("mod ") || n.starts_with("pub mod "));
                if is_mod_block {
                    let end = lines[i + 1..].iter().position(|n| *n == "}");
                    i = end.map_or(lines.len(), |e| i + 1 + e + 1);
                    continue;
                }
            }
        }
        out.push(l.split("//").next().unwrap_or(""));
        i += 1;
    }
    out
}

/// The top-level modules `text` names through `crate::`.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code_lines(text).join("\n");
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b}`: the first segment of each top-level item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.insert(ident(&group[k..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| modules.contains(m));
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = top_level_modules(&src);
    assert!(names.len() >= 10, "lib.rs declares {names:?}");
    let set: BTreeSet<String> = names.iter().cloned().collect();
    names
        .iter()
        .map(|m| {
            let mut deps = BTreeSet::new();
            for f in files_of(&src, m) {
                deps.extend(imports(&std::fs::read_to_string(&f).unwrap(), &set));
            }
            deps.remove(m);
            (m.clone(), deps)
        })
        .collect()
}

/// A circle of `g`, if it has one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0: unvisited, 1: on the current path, 2: done.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for d in &g[m] {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == d).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_one_another_without_a_circle() {
    let g = graph();
    let listing: String = g
        .iter()
        .map(|(m, d)| {
            format!(
                "{m} -> {}\n",
                d.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    if let Some(cycle) = find_cycle(&g) {
        panic!("import circle: {}\n\n{listing}", cycle.join(" -> "));
    }
    println!("{listing}");
}

#[test]
fn the_engine_imports_no_other_module() {
    let g = graph();
    assert_eq!(g["engine"], BTreeSet::new(), "the engine is a leaf");
}

#[test]
fn the_parser_sees_grouped_and_plain_paths_and_skips_tests() {
    let set: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let text = "use crate::a::X;\nuse crate::{b::Y, c};\n// crate::d\n\
                #[cfg(test)]\nmod tests {\n    use crate::d;\n}\n";
    let found: Vec<String> = imports(text, &set).into_iter().collect();
    assert_eq!(found, ["a", "b", "c"]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g).map(|c| c.len()), Some(3));
}
