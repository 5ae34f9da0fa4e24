//! The layout of `host/src` stays readable: modules depend on each other in one direction only (no
//! import circles), and files stay small enough to read in one sitting.
//!
//! A module's dependencies are the `crate::NAME` paths in its code (comments aside); `lib.rs` and
//! `main.rs` are the roots and depend on everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines of code (tests aside) past which a file must say why it is one piece.
const MAX_FILE_LINES: usize = 500;
/// How a longer file says why: in its module documentation.
const LONG_FILE_REASON: &str = "//! Longer than most files on purpose:";

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("host/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to, or `None` for the crate roots.
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The code of a file without its comments and without its inline `mod tests`.
fn code_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut previous = "";
    for line in text.lines() {
        if previous.trim() == "#[cfg(test)]" && line.starts_with("mod tests {") {
            lines.pop();
            break;
        }
        previous = line;
        lines.push(line);
    }
    lines
}

/// The top-level names a path after `crate::` starts with: one (`router::RouterHandle`), or each
/// of a group (`{listen, plugins::Loader}`).
fn named_modules(path: &str) -> Vec<String> {
    let name = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = path.strip_prefix('{') else {
        return vec![name(path)];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(name(&group[start..at]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(name(&group[start..at]));
                start = at + 1;
            }
            _ => {}
        }
    }
    names
}

fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let root = src();
    let mut files = Vec::new();
    source_files(&root, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&root, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&root, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a readable source file");
        let edges = graph.entry(module.clone()).or_default();
        let code: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect();
        // Whole, so that a group spread over lines is read as one.
        let code = code.join("\n");
        for (at, _) in code.match_indices("crate::") {
            for name in named_modules(&code[at + "crate::".len()..]) {
                if name != module && modules.contains(&name) {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

/// A circle through `start`, if there is one, as the modules along it.
fn circle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let current = path.last().expect("a path starts somewhere").clone();
    for next in graph.get(&current).into_iter().flatten() {
        if next == start {
            let mut circle = path.clone();
            circle.push(next.clone());
            return Some(circle);
        }
        if path.contains(next) || done.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(circle) = circle_from(graph, start, path, done) {
            return Some(circle);
        }
        path.pop();
    }
    None
}

#[test]
fn modules_import_each_other_in_one_direction_only() {
    let graph = dependencies();
    assert!(
        graph.len() > 10,
        "the modules of host/src were not found: {graph:?}"
    );
    let mut done = BTreeSet::new();
    let mut circles = Vec::new();
    for module in graph.keys() {
        if let Some(circle) = circle_from(&graph, module, &mut vec![module.clone()], &mut done) {
            circles.push(circle.join(" -> "));
        }
        // Every circle through this module has been found: later searches need not pass it.
        done.insert(module.clone());
    }
    assert!(
        circles.is_empty(),
        "import circles between modules:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_checker_finds_a_circle() {
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    let circle = circle_from(&graph, "a", &mut vec!["a".to_owned()], &mut BTreeSet::new());
    assert_eq!(
        circle.map(|c| c.join(" -> ")).as_deref(),
        Some("a -> b -> c -> a")
    );
}

#[test]
fn grouped_imports_name_each_module() {
    assert_eq!(named_modules("router::RouterHandle;"), ["router"]);
    assert_eq!(
        named_modules("{listen, plugins::{Chain, Loader},\n    rtsp};"),
        ["listen", "plugins", "rtsp"]
    );
}

#[test]
fn files_stay_short_or_say_why() {
    let root = src();
    let mut files = Vec::new();
    source_files(&root, &mut files);
    let mut long = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src").to_owned();
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let lines = code_lines(&text).len();
        if lines > MAX_FILE_LINES && !text.contains(LONG_FILE_REASON) {
            long.push(format!("{} ({lines} lines)", relative.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines of code that do not say why (`{LONG_FILE_REASON}`): {}",
        long.join(", ")
    );
}
