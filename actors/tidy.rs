//! Checks of the source's shape that the types do not enforce: who may write task state, where
//! the end of an attempt is built, and which module encodes cluster messages. Each reads the
//! library's own files, leaving out test code. Then checks of ARCHITECTURE.md against the tree:
//! its code map names every file, and every test it names exists. And the dashboard's script
//! never turns a string into HTML or code, and its page has nothing inline.

use std::path::{Path, PathBuf};

/// The library's source files, each with its text up to its inline test module, by path
/// relative to `actors/` (`engine/saver.rs`). Test files and folders are left out.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("actors");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" && name != "tidy.rs" {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]\nmod tests {") {
                    Some(end) => text[..end].to_owned(),
                    None => text,
                };
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy();
                files.push((rel.replace('\\', "/"), code));
            }
        }
    }
    files.sort();
    assert!(files.len() > 40, "found only {} files", files.len());
    files
}

/// The files whose code contains `needle`.
fn files_with(needle: &str) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(_, code)| code.contains(needle))
        .map(|(path, _)| path)
        .collect()
}

/// Whether the struct literal or pattern `WriteOp::Finish { .. }` at `at` in `code` builds a
/// value. A pattern has `..`, or is followed by `=>`, `=` or `else`, or follows `let` (perhaps
/// inside `Some(`).
fn builds_a_value(code: &str, at: usize) -> bool {
    let open = at + code[at..].find('{').unwrap();
    let mut depth = 0;
    let mut close = open;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            close = open + i;
            break;
        }
    }
    let body = &code[open + 1..close];
    let after = code[close + 1..].trim_start_matches(|c: char| c == ')' || c.is_whitespace());
    let before = code[..at].trim_end_matches(|c: char| c == '(' || c.is_alphanumeric());
    let pattern = body.contains("..")
        || after.starts_with("=>")
        || (after.starts_with('=') && !after.starts_with("=="))
        || after.starts_with("else")
        || before.trim_end().ends_with("let");
    !pattern
}

#[test]
fn only_the_saver_writes_task_state() {
    // `Store::write(&[WriteOp])` runs `write.lua`: the starts and ends of attempts, fenced by
    // epoch. Everyone else hands its writes to the saver's queue (`SaverHandle::write(op)`).
    assert_eq!(files_with("store.write("), ["engine/saver.rs"]);
    assert_eq!(files_with(".write(&"), ["engine/saver.rs"]);
}

#[test]
fn only_conclude_builds_the_end_of_an_attempt() {
    let mut builders = Vec::new();
    for (path, code) in sources() {
        for (at, _) in code.match_indices("WriteOp::Finish {") {
            if builds_a_value(&code, at) {
                builders.push(path.clone());
            }
        }
    }
    assert_eq!(builders, ["decide/outcome.rs"]);
}

#[test]
fn the_tidy_checks_tell_a_value_from_a_pattern() {
    for built in [
        "let op = WriteOp::Finish {\n id: x,\n epoch: 1,\n};",
        "saver.write(WriteOp::Finish { id, epoch });",
        "let ops = vec![WriteOp::Finish { id, epoch }];",
    ] {
        assert!(
            builds_a_value(built, built.find("WriteOp").unwrap()),
            "{built}"
        );
    }
    for pattern in [
        "match op {\n WriteOp::Finish { id, epoch, .. } => {}\n}",
        "match op {\n WriteOp::Finish {\n id,\n node,\n } => {}\n}",
        "if let WriteOp::Finish { id } = &op {}",
        "let WriteOp::Finish { id } = op else { return };",
        "if let Some(WriteOp::Finish { id }) = slot.take() {}",
    ] {
        assert!(
            !builds_a_value(pattern, pattern.find("WriteOp").unwrap()),
            "{pattern}"
        );
    }
}

#[test]
fn only_the_codec_uses_bincode() {
    assert_eq!(files_with("bincode"), ["cluster/codec.rs"]);
}

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (relative to the root), as paths relative to the root.
fn files_under(dir: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join(dir)];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root()).unwrap().to_string_lossy();
                files.push(rel.replace('\\', "/"));
            }
        }
    }
    files.sort();
    files
}

/// ARCHITECTURE.md.
fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap()
}

/// The code map's sections: each `### `path`` heading with the text under it.
fn code_map() -> Vec<(String, String)> {
    let doc = architecture();
    let mut sections = Vec::new();
    for part in doc.split("\n### `").skip(1) {
        let (heading, rest) = part.split_once('`').unwrap();
        let body = rest.split("\n#").next().unwrap_or_default();
        sections.push((heading.to_owned(), body.to_owned()));
    }
    sections
}

#[test]
fn the_architecture_maps_every_file() {
    let sections = code_map();
    for (heading, _) in &sections {
        assert!(
            root().join(heading).exists(),
            "ARCHITECTURE.md has a heading for `{heading}`, which does not exist"
        );
    }
    let mut unmapped = Vec::new();
    for dir in ["actors", "node", "tests", "benches", "examples"] {
        for file in files_under(dir) {
            // The deepest heading that covers the file: the file itself, a folder above it
            // (`actors/store/`), or the module file of a folder above it (`actors/config.rs`
            // for `actors/config/tests.rs`).
            let mut found = false;
            let mut at = file.as_str();
            while let Some(slash) = at.rfind('/') {
                at = &at[..slash];
                let folder = format!("{at}/");
                let parent = at.rfind('/').map_or("", |i| &at[..=i]);
                let module = format!("{at}.rs");
                let covering = sections.iter().find_map(|(h, body)| {
                    if *h == file {
                        Some(("", body))
                    } else if *h == folder {
                        Some((folder.as_str(), body))
                    } else if *h == module {
                        Some((parent, body))
                    } else {
                        None
                    }
                });
                if let Some((base, body)) = covering {
                    let rest = &file[base.len()..];
                    found = base.is_empty()
                        || body.split('`').skip(1).step_by(2).any(|named| {
                            named == rest || (named.ends_with('/') && rest.starts_with(named))
                        });
                    break;
                }
            }
            if !found {
                unmapped.push(file);
            }
        }
    }
    assert!(
        unmapped.is_empty(),
        "ARCHITECTURE.md's code map does not name {unmapped:?}"
    );
}

#[test]
fn every_test_the_architecture_names_exists() {
    let doc = architecture();
    let (rules, gaps) = doc.split_once("### Known gaps").unwrap();
    let rules = &rules[rules.find("## Invariants").unwrap()..];
    let invariants: Vec<&str> = rules.split("- **Invariant:**").skip(1).collect();
    assert!(invariants.len() >= 15, "{} invariants", invariants.len());
    for (text, ignored) in [(rules, false), (gaps, true)] {
        for named in text.split('`').skip(1).step_by(2) {
            let Some((file, test)) = named.split_once(".rs::") else {
                continue;
            };
            let path = format!("{file}.rs");
            let source = std::fs::read_to_string(root().join(&path))
                .unwrap_or_else(|e| panic!("ARCHITECTURE.md names `{named}`: {path}: {e}"));
            let at = source
                .find(&format!("fn {test}("))
                .unwrap_or_else(|| panic!("ARCHITECTURE.md names `{named}`, which is not there"));
            let attributes = &source[source[..at].rfind("}\n").unwrap_or(0)..at];
            assert_eq!(
                attributes.contains("#[ignore"),
                ignored,
                "`{named}`: a rule's test must run, a known gap's test is ignored"
            );
        }
    }
    for invariant in invariants {
        let checked = invariant.split("Checked by").nth(1).unwrap_or_default();
        assert!(
            checked.contains(".rs::"),
            "an invariant without a test: {invariant}"
        );
    }
}

#[test]
fn the_readme_runs_only_workers_that_ship() {
    let shipped: Vec<String> = std::fs::read_dir(root().join("workers"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let (stem, ext) = name.rsplit_once('.')?;
            (ext != "md").then(|| stem.to_owned())
        })
        .chain(["bg-noop", "bg-echo", "bg-sleep"].map(String::from))
        .collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut named = 0;
    for line in readme.lines() {
        for (at, _) in line.match_indices(" do ") {
            let before = &line[..at];
            if !(before.ends_with("bgnode") || before.ends_with("--")) {
                continue;
            }
            let worker = line[at + 4..].split_whitespace().next().unwrap_or_default();
            if worker == "WORKER" {
                continue; // the CLI table's placeholder
            }
            named += 1;
            assert!(
                shipped.iter().any(|s| s == worker),
                "README.md runs worker `{worker}`, which does not ship: {line}"
            );
        }
    }
    assert!(named >= 15, "only {named} `do` lines found");
}

#[test]
fn the_ci_runs_the_test_command_the_readme_gives() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let quick = &readme[readme.find("## Quick start").unwrap()..];
    let quick = &quick[..quick[3..].find("\n## ").map_or(quick.len(), |i| i + 3)];
    let commands: Vec<&str> = quick
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    assert_eq!(
        &commands[..2],
        ["./dev node\n", "./dev test\n"],
        "the quick start is two commands"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let last = ci
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(
        last, "./dev test",
        ".ci/run must end with the README's test command"
    );
}

#[test]
fn the_dashboard_never_parses_data_as_html_and_has_nothing_inline() {
    let assets = root().join("actors/http/assets");
    let js = std::fs::read_to_string(assets.join("app.js")).unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "createContextualFragment",
        "DOMParser",
        "srcdoc",
        "eval(",
        "Function(",
        "setTimeout('",
        "setAttribute('on",
        "setAttribute('style",
        "cookie",
    ] {
        assert!(
            !js.contains(sink),
            "app.js uses `{sink}`: build elements with h() and text nodes, keep the token in the tab"
        );
    }
    let html = std::fs::read_to_string(assets.join("index.html")).unwrap();
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').unwrap()];
        assert!(
            tag.contains(" src="),
            "an inline script in index.html: {tag}"
        );
    }
    for inline in [
        "<style",
        " style=",
        " onclick=",
        " onload=",
        " onerror=",
        " onsubmit=",
    ] {
        assert!(
            !html.contains(inline),
            "index.html has `{inline}`, which the CSP refuses"
        );
    }
}
