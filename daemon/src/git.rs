//! The commit checked out in the project's git repository, read from
//! `.git` directly: a run records it without starting `git`.
//!
//! Architecture invariant: pure file reading, never an error. Anything
//! unexpected (no repository, a ref format this does not know) is `None`.

use std::path::{Path, PathBuf};

/// The full hash `HEAD` points at, or `None`.
pub fn head_commit(root: &Path) -> Option<String> {
    let git_dir = git_dir(root)?;
    // A linked worktree keeps HEAD in its own directory and the refs in the
    // common one.
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .ok()
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|| git_dir.clone());
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    match head.strip_prefix("ref:") {
        None => is_hash(head).then(|| head.to_owned()),
        Some(name) => resolve_ref(&common, name.trim()),
    }
}

/// `.git` is a directory, or (worktrees, submodules) a file saying
/// `gitdir: PATH`.
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let target = text.trim().strip_prefix("gitdir:")?.trim();
    Some(root.join(target))
}

fn resolve_ref(common: &Path, name: &str) -> Option<String> {
    if !name.starts_with("refs/") || name.split('/').any(|p| p == ".." || p.is_empty()) {
        return None;
    }
    if let Ok(text) = std::fs::read_to_string(common.join(name)) {
        let hash = text.trim();
        return is_hash(hash).then(|| hash.to_owned());
    }
    // Packed refs: `<hash> <name>` lines.
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (hash, ref_name) = line.split_once(' ')?;
        (ref_name == name && is_hash(hash)).then(|| hash.to_owned())
    })
}

fn is_hash(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The files that differ between the merge base of `rev` and `HEAD` and the
/// working tree (committed, staged, unstaged, and new untracked files),
/// relative to `root`. Runs `git`; an error says what to do.
pub fn changed_since(root: &Path, rev: &str) -> Result<Vec<crate::index::RepoPath>, String> {
    let git = |args: &[&str]| -> Result<Vec<u8>, String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git ({e}); --since needs git on the PATH"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(out.stdout)
    };
    if rev.starts_with('-') {
        return Err(format!("{rev:?} is not a revision"));
    }
    let base = git(&["merge-base", rev, "HEAD"]).map_err(|e| {
        format!("no merge base of {rev} and HEAD ({e}); name a branch, tag or commit this repository has (git fetch it first)")
    })?;
    let base = String::from_utf8_lossy(&base).trim().to_owned();
    let mut out = Vec::new();
    for listing in [
        git(&[
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            "--relative",
            &base,
            "--",
        ])?,
        git(&["ls-files", "--others", "--exclude-standard", "-z"])?,
    ] {
        for name in listing.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            out.push(crate::index::RepoPath::new(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    /// Files under the root, and the expected answer.
    type Case = (Vec<(&'static str, String)>, Option<&'static str>);

    fn cases() -> Vec<Case> {
        vec![
            (vec![], None),
            (
                vec![
                    (".git/HEAD", "ref: refs/heads/main\n".into()),
                    (".git/refs/heads/main", format!("{A}\n")),
                ],
                Some(A),
            ),
            (
                vec![
                    (".git/HEAD", "ref: refs/heads/main\n".into()),
                    (
                        ".git/packed-refs",
                        format!(
                            "# pack-refs with: peeled\n{B} refs/heads/other\n{A} refs/heads/main\n"
                        ),
                    ),
                ],
                Some(A),
            ),
            (vec![(".git/HEAD", format!("{B}\n"))], Some(B)),
            // A branch with no commit yet.
            (vec![(".git/HEAD", "ref: refs/heads/main\n".into())], None),
            (
                vec![
                    (".git/HEAD", "ref: refs/heads/../../../etc\n".into()),
                    (".git/refs/heads/main", format!("{A}\n")),
                ],
                None,
            ),
            // A linked worktree.
            (
                vec![
                    (".git", "gitdir: repo/worktrees/wt\n".into()),
                    ("repo/worktrees/wt/HEAD", "ref: refs/heads/feature\n".into()),
                    ("repo/worktrees/wt/commondir", "../..\n".into()),
                    ("repo/refs/heads/feature", format!("{B}\n")),
                ],
                Some(B),
            ),
        ]
    }

    #[test]
    fn head_commits() {
        for (files, expected) in cases() {
            let dir = tempfile::tempdir().unwrap();
            for (path, text) in &files {
                let path = dir.path().join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            assert_eq!(
                head_commit(dir.path()).as_deref(),
                expected,
                "files: {files:?}"
            );
        }
    }
}
