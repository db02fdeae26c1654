//! Virtual paths: what a client names, normalised before it ever reaches storage.
//!
//! A [`VirtualPath`] is always absolute inside the account's home (`/` is the home itself), has no `.` or `..`
//! components and no NUL bytes or line breaks. Normalisation is the first line of defence; the storage layer still resolves every
//! path beneath the home at the OS level (see [`crate::storage::local`]), so a symlink cannot lead outside either.

use std::fmt;

use crate::error::CoreError;

/// Longest client path accepted, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// A normalised absolute path inside an account's home.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualPath(String);

impl VirtualPath {
    /// The home itself.
    pub fn root() -> Self {
        VirtualPath("/".to_owned())
    }

    /// Resolves client input against the current directory `cwd`, the way a shell would, except that `..` at the
    /// root stays at the root.
    pub fn resolve(cwd: &VirtualPath, input: &str) -> Result<VirtualPath, CoreError> {
        if input.len() > MAX_PATH_LEN {
            return Err(CoreError::InvalidName("path too long".into()));
        }
        check_characters(input)?;
        let mut parts: Vec<&str> = if input.starts_with('/') {
            Vec::new()
        } else {
            cwd.components().collect()
        };
        for part in input.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        let mut path = String::with_capacity(input.len() + cwd.0.len() + 1);
        for part in &parts {
            path.push('/');
            path.push_str(part);
        }
        if path.is_empty() {
            path.push('/');
        }
        Ok(VirtualPath(path))
    }

    /// Like [`VirtualPath::resolve`], but a `..` that would climb above the root is an error instead of staying at
    /// the root: for symlink targets, which must not point outside the home.
    pub fn resolve_beneath(cwd: &VirtualPath, input: &str) -> Result<VirtualPath, CoreError> {
        let start = if input.starts_with('/') {
            0
        } else {
            cwd.components().count()
        };
        depth_after(start, input).ok_or(CoreError::AccessDenied)?;
        Self::resolve(cwd, input)
    }

    /// Whether client input names a directory by its form: it ends in a slash. As in POSIX, `file/` is not the file,
    /// and `new/` cannot be created as one.
    pub fn names_dir(input: &str) -> bool {
        input.len() > 1 && input.ends_with('/')
    }

    /// Whether the symlink target `target`, as stored in a link in the directory `self`, leads to a place inside
    /// the home: relative, and no `..` climbing above the home on the way. On disk an absolute target names the
    /// server's own file system, which ferry never follows and does not show.
    pub fn holds_link_to(&self, target: &str) -> bool {
        !target.starts_with('/') && depth_after(self.components().count(), target).is_some()
    }

    /// The relative path that leads from the directory `dir` to `self` (`.` when they are the same), as stored in
    /// a symlink in `dir`.
    pub fn relative_from(&self, dir: &VirtualPath) -> String {
        let mut target = self.components().peekable();
        let mut base = dir.components().peekable();
        while let (Some(a), Some(b)) = (target.peek(), base.peek()) {
            if a != b {
                break;
            }
            target.next();
            base.next();
        }
        let mut parts: Vec<&str> = base.map(|_| "..").collect();
        parts.extend(target);
        if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        }
    }

    /// Parses an already absolute path (for example from configuration).
    pub fn parse(input: &str) -> Result<VirtualPath, CoreError> {
        Self::resolve(&Self::root(), input)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components, outermost first; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The path relative to the home, as handed to storage: `""` for the root, else `a/b`.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components().last()
    }

    /// The parent directory; the root is its own parent.
    pub fn parent(&self) -> VirtualPath {
        match self.0.rfind('/') {
            Some(0) | None => Self::root(),
            Some(i) => VirtualPath(self.0[..i].to_owned()),
        }
    }

    /// Appends one plain name (no slashes).
    pub fn join(&self, name: &str) -> Result<VirtualPath, CoreError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(CoreError::InvalidName(format!(
                "invalid file name {name:?}"
            )));
        }
        check_characters(name)?;
        let mut path = self.0.clone();
        if !self.is_root() {
            path.push('/');
        }
        path.push_str(name);
        Ok(VirtualPath(path))
    }

    /// Whether `self` is `prefix` or lies inside it.
    pub fn starts_with(&self, prefix: &VirtualPath) -> bool {
        prefix.is_root()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

impl fmt::Display for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VirtualPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Refuses the characters no path may hold, in any protocol: NUL, and line breaks, which would split a name over
/// two lines of an FTP listing, or of a log or a script reading `ls` output.
fn check_characters(input: &str) -> Result<(), CoreError> {
    if input.contains('\0') {
        return Err(CoreError::InvalidName("path contains a NUL byte".into()));
    }
    if input.contains(['\r', '\n']) {
        return Err(CoreError::InvalidName("path contains a line break".into()));
    }
    Ok(())
}

/// The depth below the root reached by following the relative `path` from a directory `depth` levels below it;
/// `None` when a `..` climbs above the root on the way.
fn depth_after(mut depth: usize, path: &str) -> Option<usize> {
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => depth = depth.checked_sub(1)?,
            _ => depth += 1,
        }
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vp(s: &str) -> VirtualPath {
        VirtualPath::parse(s).unwrap()
    }

    #[test]
    fn dot_dot_at_root_stays_at_root() {
        assert_eq!(
            VirtualPath::resolve(&vp("/"), "../../etc/passwd").unwrap(),
            vp("/etc/passwd")
        );
        assert_eq!(
            VirtualPath::resolve(&vp("/a/b"), "../../../x").unwrap(),
            vp("/x")
        );
    }

    #[test]
    fn relative_input_joins_cwd() {
        assert_eq!(
            VirtualPath::resolve(&vp("/a"), "b/./c//d").unwrap(),
            vp("/a/b/c/d")
        );
        assert_eq!(VirtualPath::resolve(&vp("/a"), "/z").unwrap(), vp("/z"));
        assert_eq!(VirtualPath::resolve(&vp("/a"), "").unwrap(), vp("/a"));
    }

    #[test]
    fn nul_bytes_are_rejected() {
        assert!(VirtualPath::resolve(&vp("/"), "a\0b").is_err());
    }

    #[test]
    fn line_breaks_are_rejected() {
        for input in ["evil\n226 fake", "fake\r226 injected.txt", "dir\r\n/x"] {
            assert!(VirtualPath::resolve(&vp("/"), input).is_err(), "{input:?}");
            assert!(
                VirtualPath::resolve_beneath(&vp("/"), input).is_err(),
                "{input:?}"
            );
        }
        assert!(VirtualPath::resolve(&vp("/"), "tab\there").is_ok());
        // Names joined one by one (SCP's C and D lines) are held to the same rule.
        for name in ["a\rb", "dir\nx", "nul\0"] {
            assert!(vp("/d").join(name).is_err(), "{name:?}");
        }
        assert!(vp("/d").join("tab\there").is_ok());
    }

    #[test]
    fn parent_and_file_name() {
        assert_eq!(vp("/a/b").parent(), vp("/a"));
        assert_eq!(vp("/a").parent(), vp("/"));
        assert_eq!(vp("/").parent(), vp("/"));
        assert_eq!(vp("/a/b").file_name(), Some("b"));
        assert_eq!(vp("/").file_name(), None);
        assert_eq!(vp("/a/b").relative(), "a/b");
    }

    #[test]
    fn starts_with_respects_component_boundaries() {
        assert!(vp("/ab/c").starts_with(&vp("/ab")));
        assert!(!vp("/abc").starts_with(&vp("/ab")));
        assert!(vp("/x").starts_with(&vp("/")));
    }

    #[test]
    fn resolve_beneath_refuses_to_climb_out() {
        assert_eq!(
            VirtualPath::resolve_beneath(&vp("/a/b"), "../c").unwrap(),
            vp("/a/c")
        );
        assert_eq!(
            VirtualPath::resolve_beneath(&vp("/a"), "/x/../y").unwrap(),
            vp("/y")
        );
        assert!(VirtualPath::resolve_beneath(&vp("/a"), "../../etc/passwd").is_err());
        assert!(VirtualPath::resolve_beneath(&vp("/"), "/..").is_err());
    }

    #[test]
    fn a_trailing_slash_names_a_directory() {
        assert!(VirtualPath::names_dir("new/"));
        assert!(VirtualPath::names_dir("/a/b/"));
        assert!(!VirtualPath::names_dir("/"));
        assert!(!VirtualPath::names_dir("a/b"));
    }

    #[test]
    fn link_targets_inside_are_relative_and_never_climb_out() {
        assert!(vp("/a/b").holds_link_to("../c"));
        assert!(vp("/a").holds_link_to("b/../../c"));
        assert!(vp("/").holds_link_to("./x"));
        assert!(!vp("/a").holds_link_to("../../c"));
        assert!(!vp("/a").holds_link_to("b/../../../c"));
        assert!(!vp("/").holds_link_to(".."));
        assert!(!vp("/a").holds_link_to("/a/c"));
    }

    #[test]
    fn relative_from_walks_up_then_down() {
        assert_eq!(vp("/a/b/c").relative_from(&vp("/a/x")), "../b/c");
        assert_eq!(vp("/a").relative_from(&vp("/a")), ".");
        assert_eq!(vp("/f").relative_from(&vp("/")), "f");
        assert_eq!(vp("/").relative_from(&vp("/d/e")), "../..");
    }

    proptest! {
        #[test]
        fn relative_from_resolves_back(dir in "(/[a-c]{1,2}){0,4}", target in "(/[a-c]{1,2}){0,4}") {
            let dir = VirtualPath::parse(&dir).unwrap();
            let target = VirtualPath::parse(&target).unwrap();
            let rel = target.relative_from(&dir);
            prop_assert_eq!(VirtualPath::resolve_beneath(&dir, &rel).unwrap(), target);
        }
    }

    proptest! {
        #[test]
        fn resolved_paths_are_normalised(cwd in "(/[a-z.]{1,3}){0,4}", input in "[a-z./\\\\]{0,40}") {
            let cwd = VirtualPath::parse(&cwd).unwrap();
            let p = VirtualPath::resolve(&cwd, &input).unwrap();
            prop_assert!(p.as_str().starts_with('/'));
            prop_assert!(p.components().all(|c| c != "." && c != ".." && !c.is_empty()));
            prop_assert!(!p.relative().starts_with('/'));
        }
    }
}
