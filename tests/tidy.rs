//! Mechanical rules that rustfmt and clippy do not check (STYLE.md, habit 10).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list dir").map(|e| e.expect("dir entry")) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The code of a file without line comments and without its `#[cfg(test)]` tail module.
fn production_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| !line.starts_with("#[cfg(test)]"))
        .map(|(number, line)| (number + 1, line.split("//").next().unwrap_or("")))
        .collect()
}

#[test]
fn src_has_no_panicking_shortcuts_or_locks() {
    let forbidden = [".unwrap()", "todo!(", "unimplemented!(", "Mutex<", "RwLock<", "dbg!("];
    let mut found = Vec::new();
    for path in rust_files(Path::new("src")) {
        let text = std::fs::read_to_string(&path).expect("read source");
        for (number, code) in production_lines(&text) {
            for pattern in forbidden.iter().filter(|pattern| code.contains(*pattern)) {
                found.push(format!("{}:{number}: {pattern}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "forbidden in src/:\n{}", found.join("\n"));
}

#[test]
fn only_the_io_layer_names_the_runtime() {
    let mut found = Vec::new();
    for path in rust_files(Path::new("src")) {
        if path.starts_with("src/io") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (number, code) in production_lines(&text) {
            if code.contains("glommio") || code.contains("io_uring::") {
                found.push(format!("{}:{number}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "glommio named outside src/io:\n{}", found.join("\n"));
}

#[test]
fn functions_fit_on_a_screen() {
    const LINES_MAX: usize = 80;
    let mut found = Vec::new();
    for path in rust_files(Path::new("src")) {
        let text = std::fs::read_to_string(&path).expect("read source");
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(super) fn ",
                "pub(super) async fn ",
                "pub(crate) fn ",
            ]
            .iter()
            .any(|prefix| trimmed.starts_with(prefix));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            let closing = format!("{}}}", " ".repeat(indent));
            let end = lines[start..].iter().position(|l| *l == closing).map_or(0, |at| at + 1);
            if end > LINES_MAX {
                found.push(format!("{}:{}: {end} lines", path.display(), start + 1));
            }
        }
    }
    assert!(found.is_empty(), "functions longer than {LINES_MAX} lines:\n{}", found.join("\n"));
}
