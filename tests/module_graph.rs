//! No import cycles between src/ modules: for every `crate::…` and `super::…` path in a
//! file, an edge from that file's module to the module the path names, taken between the two
//! children of their nearest common ancestor (so `server::conn → server::event_loop` is an
//! edge between siblings, `relay → server::supervise` one between `relay` and `server`). A
//! module and its own descendants may use each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn modules(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().into_string().unwrap();
        if path.is_dir() {
            let mut m = prefix.clone();
            m.push(name);
            modules(&path, &m, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut m = prefix.clone();
            if !matches!(stem, "mod" | "lib") {
                m.push(stem.to_string());
            }
            if prefix.first().is_some_and(|p| p == "bin") {
                continue;
            }
            out.insert(m, std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(s.len());
    s[..end].trim_end_matches(':')
}

/// Every path a file names after `crate::` or `super::`, as components; `{a, b::c}` groups
/// give one path per member.
fn references(module: &Module, text: &str) -> Vec<Module> {
    // Comments name modules without depending on them.
    let code: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    // `super` of `a::b` is `a`, whether b is a/b.rs or a/b/mod.rs.
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    let mut out = Vec::new();
    for (key, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(key) {
            let before = rest[..i].chars().last();
            rest = &rest[i + key.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let head = ident(rest);
            let mut path = base.clone();
            path.extend(head.split("::").filter(|s| !s.is_empty()).map(str::to_string));
            if rest[head.len()..].starts_with("::{") || (head.is_empty() && rest.starts_with('{')) {
                let open = rest.find('{').unwrap();
                let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
                for member in rest[open + 1..close].split(',') {
                    let mut p = path.clone();
                    p.extend(ident(member.trim()).split("::").filter(|s| !s.is_empty()).map(str::to_string));
                    out.push(p);
                }
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn sccs(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Kosaraju, on a graph of a few dozen nodes.
    let nodes: BTreeSet<&Module> = edges.keys().chain(edges.values().flatten()).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit<'a>(
        n: &'a Module,
        e: &'a BTreeMap<Module, BTreeSet<Module>>,
        seen: &mut BTreeSet<&'a Module>,
        order: &mut Vec<&'a Module>,
    ) {
        if !seen.insert(n) {
            return;
        }
        for m in e.get(n).into_iter().flatten() {
            visit(m, e, seen, order);
        }
        order.push(n);
    }
    for n in &nodes {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            reverse.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        let mut comp = Vec::new();
        visit(n, &reverse, &mut seen, &mut comp);
        if comp.len() > 1 {
            out.push(comp.into_iter().cloned().collect());
        }
    }
    out
}

#[test]
fn no_import_cycles_between_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&src, &Vec::new(), &mut files);
    let known: BTreeSet<&Module> = files.keys().collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in &files {
        // Test modules may reach anywhere.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
        for mut target in references(module, text) {
            while !target.is_empty() && !known.contains(&target) {
                target.pop();
            }
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                continue; // a module and its ancestor or descendant
            }
            edges.entry(module[..=common].to_vec()).or_default().insert(target[..=common].to_vec());
        }
    }
    let cycles: Vec<String> =
        sccs(&edges).iter().map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" ↔ ")).collect();
    assert!(cycles.is_empty(), "import cycles between modules:\n{}", cycles.join("\n"));
}
