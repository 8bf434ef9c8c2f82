//! Checks of the source's shape that the types do not enforce: who may write task state, where
//! the end of an attempt is built, and which module encodes cluster messages. Each reads the
//! library's own files, leaving out test code.

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
