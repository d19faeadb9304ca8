//! Minimal path globbing for file collectors: `*`, `?` and `[...]` in any path
//! component (not across `/`), `**` for any number of directories.

use std::path::{Path, PathBuf};

/// Files matching `pattern`, sorted. Unreadable directories are skipped.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let start = if absolute {
        PathBuf::from("/")
    } else {
        PathBuf::from(".")
    };
    let mut out = Vec::new();
    walk(&start, &parts, &mut out);
    out.sort();
    out.dedup();
    if !absolute {
        out = out
            .into_iter()
            .map(|p| p.strip_prefix("./").map(Path::to_path_buf).unwrap_or(p))
            .collect();
    }
    out
}

fn walk(dir: &Path, parts: &[&str], out: &mut Vec<PathBuf>) {
    let Some((first, rest)) = parts.split_first() else {
        if dir.is_file() {
            out.push(dir.to_path_buf());
        }
        return;
    };
    if *first == "**" {
        walk(dir, rest, out);
        for sub in entries(dir) {
            if sub.is_dir() {
                walk(&sub, parts, out);
            }
        }
        return;
    }
    if !has_wildcard(first) {
        walk(&dir.join(first), rest, out);
        return;
    }
    let Some(re) = component_regex(first) else {
        return;
    };
    for entry in entries(dir) {
        let matched = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| re.is_match(n));
        if matched {
            walk(&entry, rest, out);
        }
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn component_regex(glob: &str) -> Option<regex::Regex> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' || c == '^' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        for f in [
            "x.log",
            "y.log",
            "x.log.1",
            "a/z.log",
            "a/b/w.log",
            "a/b/v.txt",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        let r = root.display();
        let names = |pat: String| -> Vec<String> {
            expand(&pat)
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names(format!("{r}/*.log")), ["x.log", "y.log"]);
        assert_eq!(names(format!("{r}/?.log")), ["x.log", "y.log"]);
        assert_eq!(names(format!("{r}/[x].log*")), ["x.log", "x.log.1"]);
        assert_eq!(
            names(format!("{r}/**/*.log")),
            ["a/b/w.log", "a/z.log", "x.log", "y.log"]
        );
        assert_eq!(names(format!("{r}/x.log")), ["x.log"]);
        assert!(names(format!("{r}/nope/*.log")).is_empty());
    }
}
