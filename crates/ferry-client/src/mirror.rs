//! Mirroring a directory tree: walk both sides, plan what to create, copy and delete, then carry the plan out.
//!
//! A file is copied when it is missing at the destination, has another size, is newer at the source (beyond the
//! precision of the listings' times) or, with `--checksum`, hashes differently. `--delete` removes what the source
//! does not have. Include/exclude globs select files by their path relative to the mirror's root: a pattern
//! without `/` matches a name at any depth, one with `/` matches the whole relative path (`**` crosses
//! directories). Excluded files are neither copied nor deleted; an excluded directory is skipped whole.
//!
//! Symbolic links are never followed: a link in the source is not copied (nor is its namesake at the destination
//! deleted), and a link at the destination is one entry, replaced or deleted itself, never written through.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{ClientError, Result};
use crate::transfer::leftover_of;
use crate::transport::{Entry, EntryKind, Transport};
use crate::url::{is_plain_name, join};

/// Which relative paths take part in a mirror.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    /// Builds a filter; an empty `include` list includes everything.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter> {
        Ok(Filter {
            include: build_set(include)?,
            exclude: build_set(exclude)?,
        })
    }

    /// Whether the file or directory at `rel` (and every directory above it) takes part.
    pub fn allows(&self, rel: &str, is_dir: bool) -> bool {
        let mut prefix_end = 0;
        // Ancestors must not be excluded.
        while let Some(i) = rel[prefix_end..].find('/') {
            let ancestor = &rel[..prefix_end + i];
            if self.excluded(ancestor) {
                return false;
            }
            prefix_end += i + 1;
        }
        if self.excluded(rel) {
            return false;
        }
        if is_dir {
            return true;
        }
        match &self.include {
            None => true,
            Some(set) => set.is_match(rel) || set.is_match(base_name(rel)),
        }
    }

    fn excluded(&self, rel: &str) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|set| set.is_match(rel) || set.is_match(base_name(rel)))
    }
}

fn build_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob: Glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| ClientError::Usage(format!("bad glob {p:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| ClientError::Usage(e.to_string()))
}

fn base_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// A file or directory in a tree, by its path relative to the tree's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub rel: String,
    pub entry: Entry,
}

/// Why a file is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyReason {
    New,
    Size,
    Newer,
    Checksum,
}

/// One step of a mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Remove a destination file or (empty by then) directory.
    Delete { rel: String, is_dir: bool },
    /// Create a destination directory.
    Mkdir { rel: String },
    /// Copy a file.
    Copy {
        rel: String,
        size: u64,
        reason: CopyReason,
    },
    /// Same size, compare checksums (`--checksum`) and copy if they differ.
    Compare { rel: String, size: u64 },
}

/// What a mirror does besides copying changed files.
#[derive(Clone, Copy, Debug, Default)]
pub struct MirrorOptions {
    /// Delete destination files the source does not have.
    pub delete: bool,
    /// Decide by checksum instead of time for files of the same size.
    pub checksum: bool,
}

/// Plans a mirror of `source` onto `destination`. Deletions of what is in the way of a source entry of another
/// type come first, then directories (parents first), copies, and other deletions (contents before their
/// directories).
pub fn plan(
    source: &[TreeEntry],
    destination: &[TreeEntry],
    filter: &Filter,
    options: MirrorOptions,
) -> Vec<Action> {
    let src: BTreeMap<&str, &Entry> = source
        .iter()
        .filter(|t| is_copied(&t.entry) && filter.allows(&t.rel, t.entry.is_dir()))
        .map(|t| (t.rel.as_str(), &t.entry))
        .collect();
    let dst: HashMap<&str, &Entry> = destination
        .iter()
        .map(|t| (t.rel.as_str(), &t.entry))
        .collect();
    let mut conflicts = Vec::new();
    let mut mkdirs = Vec::new();
    let mut copies = Vec::new();
    let mut deletes = Vec::new();
    let mut doomed_dirs: Vec<&str> = Vec::new();

    for (&rel, s) in &src {
        let d = dst.get(rel);
        if s.is_dir() {
            match d {
                Some(d) if d.is_dir() => {}
                Some(_) => {
                    conflicts.push((rel.to_owned(), false));
                    mkdirs.push(Action::Mkdir {
                        rel: rel.to_owned(),
                    });
                }
                None => mkdirs.push(Action::Mkdir {
                    rel: rel.to_owned(),
                }),
            }
            continue;
        }
        let reason = match d {
            None => Some(CopyReason::New),
            Some(d) if d.is_dir() => {
                conflicts.push((rel.to_owned(), true));
                doomed_dirs.push(rel);
                Some(CopyReason::New)
            }
            Some(d) if d.size != s.size => Some(CopyReason::Size),
            Some(_) if options.checksum => {
                copies.push(Action::Compare {
                    rel: rel.to_owned(),
                    size: s.size,
                });
                None
            }
            Some(d) if is_newer(s, d) => Some(CopyReason::Newer),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            copies.push(Action::Copy {
                rel: rel.to_owned(),
                size: s.size,
                reason,
            });
        }
    }

    // Whatever sits inside a destination directory that a source file replaces must go first.
    let inside_doomed = |rel: &str| {
        doomed_dirs
            .iter()
            .any(|d| rel.starts_with(&format!("{d}/")))
    };
    let mut conflict_contents: Vec<(String, bool)> = destination
        .iter()
        .filter(|t| inside_doomed(&t.rel))
        .map(|t| (t.rel.clone(), t.entry.is_dir()))
        .collect();
    conflict_contents.extend(conflicts);
    let mut first: Vec<Action> = order_deletes(conflict_contents);

    if options.delete {
        // What stands at the place of a source link or special file (which is not copied) stays as it is.
        let not_copied: Vec<&str> = source
            .iter()
            .filter(|t| !is_copied(&t.entry))
            .map(|t| t.rel.as_str())
            .collect();
        let extra: Vec<(String, bool)> = destination
            .iter()
            .filter(|t| !src.contains_key(t.rel.as_str()))
            .filter(|t| !not_copied.iter().any(|k| is_at_or_below(&t.rel, k)))
            .filter(|t| !inside_doomed(&t.rel))
            .filter(|t| !is_leftover_of(&t.rel, &src))
            .filter(|t| filter.allows(&t.rel, t.entry.is_dir()))
            .map(|t| (t.rel.clone(), t.entry.is_dir()))
            .collect();
        // A directory that still holds excluded (protected) files stays.
        let protected: Vec<&str> = destination
            .iter()
            .filter(|t| !filter.allows(&t.rel, t.entry.is_dir()))
            .map(|t| t.rel.as_str())
            .collect();
        deletes = order_deletes(
            extra
                .into_iter()
                .filter(|(rel, is_dir)| {
                    !*is_dir || !protected.iter().any(|p| p.starts_with(&format!("{rel}/")))
                })
                .collect(),
        );
    }
    mkdirs.sort_by(|a, b| rel_of(a).cmp(rel_of(b)));
    first.extend(mkdirs);
    first.extend(copies);
    first.extend(deletes);
    first
}

/// Whether a source entry takes part in a mirror: directories and regular files do; symbolic links and special
/// files are neither followed nor copied (see [`skipped`]).
fn is_copied(entry: &Entry) -> bool {
    matches!(entry.kind, EntryKind::File | EntryKind::Dir)
}

/// The source entries that [`plan`] leaves alone although the filter selects them: symbolic links and special
/// files, for the caller to report.
pub fn skipped<'a>(
    source: &'a [TreeEntry],
    filter: &'a Filter,
) -> impl Iterator<Item = &'a TreeEntry> {
    source
        .iter()
        .filter(|t| !is_copied(&t.entry) && filter.allows(&t.rel, false))
}

/// Whether `rel` is what an unfinished download of a source file left (its `.part` and sidecars): the copy of
/// that file resumes from it, then renames or removes it, so `--delete` must not take it away first.
fn is_leftover_of(rel: &str, src: &BTreeMap<&str, &Entry>) -> bool {
    leftover_of(rel).is_some_and(|file| src.get(file).is_some_and(|e| !e.is_dir()))
}

/// Whether the relative path `rel` is `place` or inside it.
fn is_at_or_below(rel: &str, place: &str) -> bool {
    rel.strip_prefix(place)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn rel_of(a: &Action) -> &str {
    match a {
        Action::Delete { rel, .. }
        | Action::Mkdir { rel }
        | Action::Copy { rel, .. }
        | Action::Compare { rel, .. } => rel,
    }
}

/// Deletions with every directory after its contents.
fn order_deletes(mut items: Vec<(String, bool)>) -> Vec<Action> {
    items.sort_by(|a, b| b.0.cmp(&a.0));
    items.dedup();
    let (dirs, files): (Vec<_>, Vec<_>) = items.into_iter().partition(|(_, d)| *d);
    files
        .into_iter()
        .chain(dirs)
        .map(|(rel, is_dir)| Action::Delete { rel, is_dir })
        .collect()
}

/// The source is newer than the destination by more than the listings can tell apart.
fn is_newer(src: &Entry, dst: &Entry) -> bool {
    match (src.mtime, dst.mtime) {
        (Some(s), Some(d)) => {
            let slack = src
                .mtime_precision
                .max(dst.mtime_precision)
                .max(Duration::from_secs(1));
            s.duration_since(d).is_ok_and(|ahead| ahead >= slack)
        }
        _ => false,
    }
}

/// Lists a whole tree below `root` (breadth first). A missing root gives an empty tree. Names that are not plain
/// names ([`is_plain_name`]) are left out; symbolic links are listed as links and not entered.
pub async fn walk(
    transport: &mut dyn Transport,
    root: &str,
    filter: &Filter,
) -> Result<Vec<TreeEntry>> {
    let mut out = Vec::new();
    match transport.stat(root).await? {
        Some(e) if e.is_dir() => {}
        Some(_) => {
            return Err(ClientError::remote(root, "not a directory"));
        }
        None => return Ok(out),
    }
    let mut queue = vec![String::new()];
    while let Some(rel_dir) = queue.pop() {
        let dir = if rel_dir.is_empty() {
            root.to_owned()
        } else {
            join(root, &rel_dir)
        };
        let mut entries = transport.list(&dir).await?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for entry in entries {
            if !is_plain_name(&entry.name) {
                tracing::warn!("{dir}: skipped {:?}: not a plain file name", entry.name);
                continue;
            }
            let rel = if rel_dir.is_empty() {
                entry.name.clone()
            } else {
                format!("{rel_dir}/{}", entry.name)
            };
            if entry.is_dir() && filter.allows(&rel, true) {
                queue.push(rel.clone());
            }
            out.push(TreeEntry { rel, entry });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::UNIX_EPOCH;

    fn file(rel: &str, size: u64, mtime: u64) -> TreeEntry {
        TreeEntry {
            rel: rel.to_owned(),
            entry: Entry {
                name: base_name(rel).to_owned(),
                kind: EntryKind::File,
                size,
                mtime: Some(UNIX_EPOCH + Duration::from_secs(mtime)),
                mtime_precision: Duration::from_secs(1),
                mode: None,
            },
        }
    }

    fn dir(rel: &str) -> TreeEntry {
        TreeEntry {
            rel: rel.to_owned(),
            entry: Entry {
                name: base_name(rel).to_owned(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: None,
                mtime_precision: Duration::from_secs(1),
                mode: None,
            },
        }
    }

    fn link(rel: &str) -> TreeEntry {
        let mut t = file(rel, 0, 1);
        t.entry.kind = EntryKind::Symlink;
        t
    }

    fn no_filter() -> Filter {
        Filter::default()
    }

    #[test]
    fn links_in_the_source_are_neither_copied_nor_make_deletions() {
        let src = vec![link("l"), file("f", 1, 1), link("m")];
        let dst = vec![
            file("l", 3, 1),
            dir("m"),
            file("m/x", 1, 1),
            file("ma", 1, 1),
        ];
        let opts = MirrorOptions {
            delete: true,
            ..MirrorOptions::default()
        };
        assert_eq!(
            plan(&src, &dst, &no_filter(), opts),
            vec![
                Action::Copy {
                    rel: "f".into(),
                    size: 1,
                    reason: CopyReason::New
                },
                Action::Delete {
                    rel: "ma".into(),
                    is_dir: false
                },
            ]
        );
        let filter = no_filter();
        let skipped: Vec<&str> = skipped(&src, &filter).map(|t| t.rel.as_str()).collect();
        assert_eq!(skipped, ["l", "m"]);
    }

    #[test]
    fn delete_keeps_what_unfinished_downloads_of_source_files_left() {
        let src = vec![file("big.bin", 100, 1), dir("d"), file("d/x", 5, 1)];
        let dst = vec![
            file("big.bin.part", 40, 1),
            file("big.bin.part.source", 20, 1),
            file("big.bin.part.segments", 2, 1),
            dir("d"),
            file("d/x.part.source.new", 20, 1),
            file("gone.bin.part", 7, 1),
        ];
        let opts = MirrorOptions {
            delete: true,
            ..MirrorOptions::default()
        };
        let deletes: Vec<Action> = plan(&src, &dst, &no_filter(), opts)
            .into_iter()
            .filter(|a| matches!(a, Action::Delete { .. }))
            .collect();
        assert_eq!(
            deletes,
            [Action::Delete {
                rel: "gone.bin.part".into(),
                is_dir: false
            }]
        );
    }

    #[test]
    fn a_link_at_the_destination_is_replaced_not_written_through() {
        let src = vec![dir("d"), file("d/a", 1, 1)];
        let dst = vec![link("d")];
        assert_eq!(
            plan(&src, &dst, &no_filter(), MirrorOptions::default()),
            vec![
                Action::Delete {
                    rel: "d".into(),
                    is_dir: false
                },
                Action::Mkdir { rel: "d".into() },
                Action::Copy {
                    rel: "d/a".into(),
                    size: 1,
                    reason: CopyReason::New
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_local_walk_lists_a_linked_directory_as_a_link_and_does_not_enter_it() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(root.join("real/x"), b"x").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let tree = walk(
            &mut crate::transport::local::LocalTransport,
            &root.to_string_lossy(),
            &no_filter(),
        )
        .await
        .unwrap();
        let found: Vec<(&str, EntryKind)> = tree
            .iter()
            .map(|t| (t.rel.as_str(), t.entry.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("link", EntryKind::Symlink),
                ("real", EntryKind::Dir),
                ("real/x", EntryKind::File)
            ]
        );
    }

    #[test]
    fn only_new_resized_and_newer_files_are_copied() {
        let src = vec![
            file("same", 10, 100),
            file("new", 5, 100),
            file("resized", 7, 100),
            file("newer", 3, 200),
            file("older", 3, 50),
        ];
        let dst = vec![
            file("same", 10, 100),
            file("resized", 8, 100),
            file("newer", 3, 100),
            file("older", 3, 100),
        ];
        let actions = plan(&src, &dst, &no_filter(), MirrorOptions::default());
        assert_eq!(
            actions,
            vec![
                Action::Copy {
                    rel: "new".into(),
                    size: 5,
                    reason: CopyReason::New
                },
                Action::Copy {
                    rel: "newer".into(),
                    size: 3,
                    reason: CopyReason::Newer
                },
                Action::Copy {
                    rel: "resized".into(),
                    size: 7,
                    reason: CopyReason::Size
                },
            ]
        );
    }

    #[test]
    fn coarse_listing_times_do_not_cause_copies() {
        let src = vec![file("f", 3, 130)];
        let mut d = file("f", 3, 120);
        d.entry.mtime_precision = Duration::from_secs(60);
        assert!(plan(&src, &[d], &no_filter(), MirrorOptions::default()).is_empty());
    }

    #[test]
    fn delete_removes_extras_contents_first() {
        let src = vec![file("keep", 1, 1)];
        let dst = vec![
            file("keep", 1, 1),
            dir("old"),
            file("old/a", 1, 1),
            dir("old/sub"),
            file("old/sub/b", 1, 1),
        ];
        let opts = MirrorOptions {
            delete: true,
            ..MirrorOptions::default()
        };
        assert_eq!(
            plan(&src, &dst, &no_filter(), opts),
            vec![
                Action::Delete {
                    rel: "old/sub/b".into(),
                    is_dir: false
                },
                Action::Delete {
                    rel: "old/a".into(),
                    is_dir: false
                },
                Action::Delete {
                    rel: "old/sub".into(),
                    is_dir: true
                },
                Action::Delete {
                    rel: "old".into(),
                    is_dir: true
                },
            ]
        );
        assert!(plan(&src, &dst, &no_filter(), MirrorOptions::default()).is_empty());
    }

    #[test]
    fn excluded_files_are_neither_copied_nor_deleted() {
        let filter = Filter::new(&[], &["*.tmp".to_owned(), "cache".to_owned()]).unwrap();
        let src = vec![
            file("a.tmp", 1, 1),
            dir("cache"),
            file("cache/x", 1, 1),
            file("b", 1, 1),
        ];
        let dst = vec![file("c.tmp", 1, 1), dir("cache"), file("cache/y", 1, 1)];
        let opts = MirrorOptions {
            delete: true,
            ..MirrorOptions::default()
        };
        assert_eq!(
            plan(&src, &dst, &filter, opts),
            vec![Action::Copy {
                rel: "b".into(),
                size: 1,
                reason: CopyReason::New
            }]
        );
    }

    #[test]
    fn includes_select_files_by_name_or_path() {
        let filter = Filter::new(&["*.txt".to_owned(), "docs/**/*.md".to_owned()], &[]).unwrap();
        assert!(filter.allows("a.txt", false));
        assert!(filter.allows("deep/dir/a.txt", false));
        assert!(filter.allows("docs/x/y/readme.md", false));
        assert!(!filter.allows("readme.md", false));
        assert!(!filter.allows("a.bin", false));
        assert!(filter.allows("anydir", true));
        let star = Filter::new(&["dir/*".to_owned()], &[]).unwrap();
        assert!(star.allows("dir/a", false));
        assert!(!star.allows("dir/sub/a", false));
    }

    #[test]
    fn a_file_replacing_a_directory_deletes_it_first() {
        let src = vec![file("x", 1, 1)];
        let dst = vec![dir("x"), file("x/inner", 1, 1)];
        assert_eq!(
            plan(&src, &dst, &no_filter(), MirrorOptions::default()),
            vec![
                Action::Delete {
                    rel: "x/inner".into(),
                    is_dir: false
                },
                Action::Delete {
                    rel: "x".into(),
                    is_dir: true
                },
                Action::Copy {
                    rel: "x".into(),
                    size: 1,
                    reason: CopyReason::New
                },
            ]
        );
    }

    #[test]
    fn checksum_mode_compares_same_sized_files() {
        let src = vec![file("f", 3, 500)];
        let dst = vec![file("f", 3, 100)];
        let opts = MirrorOptions {
            checksum: true,
            ..MirrorOptions::default()
        };
        assert_eq!(
            plan(&src, &dst, &no_filter(), opts),
            vec![Action::Compare {
                rel: "f".into(),
                size: 3
            }]
        );
    }

    /// A model of a tree: relative path to `Some(size)` for files, `None` for directories.
    type Model = BTreeMap<String, Option<u64>>;

    fn to_tree(m: &Model, mtime: u64) -> Vec<TreeEntry> {
        m.iter()
            .map(|(rel, size)| match size {
                Some(s) => file(rel, *s, mtime),
                None => dir(rel),
            })
            .collect()
    }

    fn apply(dst: &mut Model, src: &Model, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Delete { rel, is_dir } => {
                    assert_eq!(
                        dst.get(rel).map(Option::is_none),
                        Some(*is_dir),
                        "delete {rel}"
                    );
                    if *is_dir {
                        assert!(
                            !dst.keys().any(|k| k.starts_with(&format!("{rel}/"))),
                            "directory {rel} not empty"
                        );
                    }
                    dst.remove(rel);
                }
                Action::Mkdir { rel } => {
                    assert!(!dst.contains_key(rel), "mkdir over {rel}");
                    dst.insert(rel.clone(), None);
                }
                Action::Copy { rel, .. } | Action::Compare { rel, .. } => {
                    assert_ne!(dst.get(rel), Some(&None), "copy over directory {rel}");
                    dst.insert(rel.clone(), src[rel]);
                }
            }
        }
    }

    fn model_strategy() -> impl Strategy<Value = Model> {
        proptest::collection::btree_map(
            "[ab]{1,2}(/[ab]{1,2}){0,2}",
            proptest::option::of(0u64..4),
            0..12,
        )
        .prop_map(|m| {
            // Make it a valid tree: every ancestor of an entry is a directory.
            let mut tree = Model::new();
            for (rel, size) in m {
                let parts: Vec<&str> = rel.split('/').collect();
                let mut ok = true;
                for i in 1..parts.len() {
                    let anc = parts[..i].join("/");
                    if let Some(Some(_)) = tree.get(&anc) {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    continue;
                }
                for i in 1..parts.len() {
                    tree.insert(parts[..i].join("/"), None);
                }
                tree.entry(rel).or_insert(size);
            }
            tree
        })
    }

    proptest! {
        #[test]
        fn mirror_with_delete_makes_the_destination_equal_the_source(src in model_strategy(), dst in model_strategy()) {
            let mut result = dst.clone();
            let actions = plan(&to_tree(&src, 10), &to_tree(&dst, 20), &no_filter(), MirrorOptions { delete: true, checksum: false });
            apply(&mut result, &src, &actions);
            // Files of equal size and older source time are kept as they are: sizes match anyway.
            prop_assert_eq!(result, src);
        }

        #[test]
        fn mirror_without_delete_keeps_every_extra(src in model_strategy(), dst in model_strategy()) {
            let mut result = dst.clone();
            let actions = plan(&to_tree(&src, 10), &to_tree(&dst, 20), &no_filter(), MirrorOptions::default());
            apply(&mut result, &src, &actions);
            for (rel, size) in &src {
                prop_assert_eq!(result.get(rel), Some(size));
            }
            for rel in dst.keys() {
                let replaced = src.keys().any(|s| rel == s || rel.starts_with(&format!("{s}/")));
                prop_assert!(replaced || result.contains_key(rel), "{} lost", rel);
            }
        }

        #[test]
        fn a_second_plan_after_mirroring_is_empty(src in model_strategy(), dst in model_strategy()) {
            let mut result = dst.clone();
            let actions = plan(&to_tree(&src, 10), &to_tree(&dst, 20), &no_filter(), MirrorOptions { delete: true, checksum: false });
            apply(&mut result, &src, &actions);
            let again = plan(&to_tree(&src, 10), &to_tree(&result, 10), &no_filter(), MirrorOptions { delete: true, checksum: false });
            prop_assert!(again.is_empty(), "{:?}", again);
        }
    }
}
