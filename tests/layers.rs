//! The dependency arrows between the source files run one way: no module uses one that uses it
//! back (the data path and the control plane meet in `route.rs` and `group.rs`, not in each
//! other's files). Read from the source itself: the paths each file names (`crate::…`,
//! `super::…`, a module brought in by `use`, a child declared with `mod`), each resolved to the
//! file that defines it. A file naming its own ancestors (`super::Close`, the crate root) is a
//! child using its parent's namespace, not an arrow back. Test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every source file by its module path (`src/session/fence.rs` → `session::fence`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut m = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                m.push(name);
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Only the code before the unit tests, without comments.
            let code = text.split("#[cfg(test)]\nmod").next().unwrap_or("");
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(m, code);
        }
    }
}

/// The longest module prefix of `path` that is a file.
fn file_of(files: &BTreeMap<Module, String>, path: &[String]) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| files.contains_key(m))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file names: `a::b::c` sequences, with `{…}` groups of `use` expanded one level.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            segs.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
                if chars.get(j) == Some(&'{') {
                    let end = (j..chars.len()).find(|&k| chars[k] == '}').unwrap_or(j);
                    let inner: String = chars[j + 1..end].iter().collect();
                    for item in inner.split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        let first = first.split_whitespace().next().unwrap_or("");
                        if !first.is_empty() {
                            let mut p = segs.clone();
                            if first != "self" {
                                p.push(first.to_string());
                            }
                            out.push(p);
                        }
                    }
                    j = end + 1;
                    segs.clear();
                    break;
                }
                if chars.get(j).is_some_and(|c| is_ident(*c)) {
                    continue;
                }
            }
            break;
        }
        if segs.len() > 1 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// Which files each file uses (arrows to its own ancestors left out).
fn arrows(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    // Items the crate root re-exports, by the file that defines them.
    let reexports: BTreeMap<&str, Module> = [
        ("Group", vec!["group".to_string()]),
        ("Config", vec!["config".to_string()]),
        ("Server", vec!["server".to_string()]),
    ]
    .into_iter()
    .collect();
    let mut all = BTreeMap::new();
    for (m, code) in files {
        let mut aliases: BTreeMap<String, Module> = BTreeMap::new();
        for line in code.lines() {
            let l = line.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            if let Some(rest) = l.strip_prefix("mod ")
                && let Some(name) = rest.strip_suffix(';')
            {
                let mut child = m.clone();
                child.push(name.trim().to_string());
                aliases.insert(name.trim().to_string(), child);
            }
        }
        let mut used = BTreeSet::new();
        let resolve = |p: &[String], aliases: &BTreeMap<String, Module>| -> Option<Module> {
            let (mut base, rest) = match p[0].as_str() {
                "crate" => (Vec::new(), &p[1..]),
                "self" => (m.clone(), &p[1..]),
                "super" => {
                    let mut b = m.clone();
                    let mut r = p;
                    while r.first().is_some_and(|s| s == "super") {
                        b.pop();
                        r = &r[1..];
                    }
                    (b, r)
                }
                first => (aliases.get(first)?.clone(), &p[1..]),
            };
            base.extend(rest.iter().cloned());
            if base.len() == 1
                && let Some(r) = reexports.get(base[0].as_str())
            {
                base = r.clone();
            }
            Some(base)
        };
        // Two passes: `use` lines name modules that later paths start from.
        for pass in 0..2 {
            for p in paths(code) {
                let Some(full) = resolve(&p, &aliases) else {
                    continue;
                };
                if pass == 0 {
                    if let Some(last) = full.last() {
                        aliases.entry(last.clone()).or_insert(full.clone());
                    }
                    continue;
                }
                let Some(target) = file_of(files, &full) else {
                    continue;
                };
                // A path to a module itself (`use crate::session;`) only names it: the paths
                // to its items are the uses.
                if target == full || target == *m || m.starts_with(&target) {
                    continue;
                }
                used.insert(target);
            }
        }
        all.insert(m.clone(), used);
    }
    all
}

/// The strongly connected components of more than one file (Tarjan).
fn cycles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let Some((w, _)) = s.g.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let mut files = BTreeMap::new();
    modules(Path::new("src"), &[], &mut files);
    assert!(files.len() > 40, "read {} files", files.len());
    let g = arrows(&files);
    // The reader finds the arrows it must: a sample it would miss if it were broken.
    let has = |a: &str, b: &str| {
        let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
        g.get(&m(a)).is_some_and(|u| u.contains(&m(b)))
    };
    assert!(has("session::dedicated::step", "session::fence"));
    assert!(has("sentinel::watcher", "group"));
    assert!(has("sentinel::watcher", "sentinel::decide"));
    assert!(has("resp::request", "command"));
    let found = cycles(&g);
    let text: Vec<String> = found
        .iter()
        .map(|c| {
            let names: BTreeSet<&Module> = c.iter().collect();
            let mut lines = Vec::new();
            for a in c {
                for b in &g[a] {
                    if names.contains(b) {
                        lines.push(format!("  {} -> {}", a.join("::"), b.join("::")));
                    }
                }
            }
            lines.join("\n")
        })
        .collect();
    assert!(
        found.is_empty(),
        "modules that use each other:\n{}",
        text.join("\n\n")
    );
}
