//! The module graph: built from every `use` and path in `src/` (test modules aside), it has no
//! circles, and only the server composes the proxy. A circle means two modules cannot be read,
//! tested or changed apart; this keeps the layering the README's Layout section describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// A module's path below the crate root, e.g. `["proxy", "http1"]`.
type ModPath = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file holds; `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: ModPath = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        return None;
    }
    Some(parts)
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// Every path a file names, as written (first segment included).
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix.clone();
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.0.push(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix.clone();
                full.push(r.ident.to_string());
                self.0.push(full);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            _ => &[],
        };
        if is_cfg_test(attrs) {
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.0
                .push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }
}

/// Resolves a path named in module `at` to the module it reaches, if it is one of ours.
fn resolve(at: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let (mut base, rest): (ModPath, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (at.clone(), &path[1..]),
        Some("super") => {
            let mut base = at.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        Some(first) => {
            // A bare path reaches a child module declared here (`mod llm;` then `llm::X`).
            let mut child = at.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            (at.clone(), path)
        }
        None => return None,
    };
    // The deepest module the path names; an item's path ends in the module that holds it.
    let mut found = (!base.is_empty() && modules.contains(&base)).then(|| base.clone());
    for seg in rest {
        base.push(seg.clone());
        if modules.contains(&base) {
            found = Some(base.clone());
        } else {
            break;
        }
    }
    found
}

/// The module graph of `src/`: who imports whom.
fn graph() -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let parsed: Vec<(ModPath, syn::File)> = files
        .iter()
        .filter_map(|f| {
            let m = module_of(&src, f)?;
            let text = std::fs::read_to_string(f).expect("read source");
            let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            Some((m, file))
        })
        .collect();
    let modules: BTreeSet<ModPath> = parsed.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (m, file) in &parsed {
        let mut paths = Paths::default();
        paths.visit_file(file);
        let out: BTreeSet<ModPath> = paths
            .0
            .iter()
            .filter_map(|p| resolve(m, p, &modules))
            .filter(|to| to != m)
            .collect();
        edges.insert(m.clone(), out);
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = s.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn the_module_graph_has_no_circles() {
    let edges = graph();
    assert!(edges.len() > 20, "found only {} modules", edges.len());
    let found = circles(&edges);
    let detail: Vec<String> = found
        .iter()
        .map(|c| {
            let members: BTreeSet<&String> = c.iter().collect();
            let inner: Vec<String> = edges
                .iter()
                .filter(|(m, _)| members.contains(&m.join("::")))
                .flat_map(|(m, to)| {
                    to.iter()
                        .filter(|t| members.contains(&t.join("::")))
                        .map(move |t| format!("{} -> {}", m.join("::"), t.join("::")))
                })
                .collect();
            inner.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", detail.join("\n"));
}

#[test]
fn only_the_server_composes_the_proxy() {
    let edges = graph();
    let importers: Vec<String> = edges
        .iter()
        .filter(|(m, to)| m[0] != "proxy" && to.iter().any(|t| t[0] == "proxy"))
        .map(|(m, _)| m.join("::"))
        .collect();
    assert_eq!(
        importers,
        ["server"],
        "modules outside proxy/ that import it"
    );
}

#[test]
fn the_graph_sees_a_circle_when_there_is_one() {
    // The check itself: two modules naming each other are one circle.
    let a: ModPath = vec!["a".into()];
    let b: ModPath = vec!["b".into()];
    let c: ModPath = vec!["c".into()];
    let edges = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone(), c.clone()])),
        (c.clone(), BTreeSet::new()),
    ]);
    assert_eq!(
        circles(&edges),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
    let modules = BTreeSet::from([
        vec!["proxy".to_string()],
        vec!["proxy".to_string(), "llm".to_string()],
        vec!["llm".to_string()],
    ]);
    let at = vec!["proxy".to_string()];
    let path = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        resolve(&at, &path("llm::LlmCall"), &modules),
        Some(path("proxy::llm"))
    );
    assert_eq!(
        resolve(&at, &path("crate::llm::Api"), &modules),
        Some(path("llm"))
    );
    assert_eq!(
        resolve(&path("proxy::llm"), &path("super::Warden"), &modules),
        Some(path("proxy"))
    );
}

/// The `ProxyHttp` phases, each with its length in lines (signature to closing brace).
fn phase_lengths() -> Vec<(String, usize)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy/warden.rs");
    let text = std::fs::read_to_string(path).expect("read warden.rs");
    let start = text
        .find("impl ProxyHttp for Warden")
        .expect("the ProxyHttp impl");
    let mut phases = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for (n, line) in text[start..].lines().enumerate() {
        let signature = line
            .strip_prefix("    async fn ")
            .or_else(|| line.strip_prefix("    fn "));
        if let Some(rest) = signature {
            let name = rest.split(['(', '<']).next().unwrap_or_default();
            open = Some((name.to_string(), n));
        } else if line == "    }" {
            if let Some((name, from)) = open.take() {
                phases.push((name, n - from + 1));
            }
        }
    }
    phases
}

#[test]
fn every_proxy_phase_is_at_most_25_lines() {
    let phases = phase_lengths();
    let names: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
    for phase in [
        "request_filter",
        "upstream_peer",
        "upstream_request_filter",
        "logging",
    ] {
        assert!(names.contains(&phase), "{phase} not found in {names:?}");
    }
    let long: Vec<&(String, usize)> = phases.iter().filter(|(_, n)| *n > 25).collect();
    assert!(long.is_empty(), "phases over 25 lines: {long:?}");
}

#[test]
fn the_request_context_holds_a_plan_not_dozens_of_fields() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy/ctx.rs");
    let file =
        syn::parse_file(&std::fs::read_to_string(path).expect("read ctx.rs")).expect("parse");
    let fields: Vec<String> = file
        .items
        .iter()
        .find_map(|item| match item {
            syn::Item::Struct(s) if s.ident == "RequestCtx" => Some(
                s.fields
                    .iter()
                    .filter_map(|f| f.ident.as_ref().map(ToString::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .expect("RequestCtx");
    assert!(fields.iter().any(|f| f == "plan"), "{fields:?}");
    assert!(
        fields.len() <= 8,
        "RequestCtx has {} fields: {fields:?}",
        fields.len()
    );
}

#[test]
fn the_readme_layout_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("read README");
    let layout = &readme[readme.find("## Layout").expect("a Layout section")..];
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(root).ok())
        .map(|f| f.display().to_string())
        .filter(|f| !layout.contains(&format!("`{f}`")))
        .collect();
    assert!(missing.is_empty(), "not in the README Layout: {missing:?}");
}
