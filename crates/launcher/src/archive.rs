//! Taking output files out of a tar stream of a compute's working directory, whatever brought
//! it (the Docker engine's archive API, `tar` run in a pod): only regular files that match a
//! pattern are kept; symbolic and hard links are reported and never followed (a link to
//! `/etc/shadow` yields the link, not the file); an entry whose name would leave the
//! destination refuses the whole archive, with everything collected so far removed; counts and
//! sizes are capped ([`Limits`]). And the other way, the task's input files as an archive of
//! its working directory ([`append_inputs`]).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why an archive was not taken: the task's doing ([`ExtractError::Refused`]: a hostile name,
/// too many or too large files), or the launcher's (its disk, a broken stream).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = ExtractError> = std::result::Result<T, E>;

/// Caps on what [`extract`] takes out of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 1000,
            max_file_bytes: 256 * 1024 * 1024,
            max_total_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A file to put into a compute's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative to the working directory, `/` between directories.
    pub path: String,
    pub contents: Vec<u8>,
}

/// A file taken out of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedFile {
    /// Relative to the working directory.
    pub path: String,
    /// Where it is now, under the destination directory.
    pub stored: PathBuf,
    pub size: u64,
}

/// A match that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub why: String,
}

/// What [`extract`] took, and the matches it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    pub files: Vec<ExtractedFile>,
    pub skipped: Vec<Skipped>,
}

impl Extracted {
    /// The files taken, as a `task.finished` lists them (`file://` URIs of where they are
    /// stored); the matches not taken are logged.
    pub fn into_output_files(self) -> crate::backend::BackendResult<Vec<ferry_event::payload::OutputFile>> {
        for s in &self.skipped {
            tracing::warn!(path = %s.path, why = %s.why, "an output file was not collected");
        }
        self.files
            .into_iter()
            .map(|f| {
                let uri = url::Url::from_file_path(&f.stored).map_err(|()| {
                    crate::backend::AttemptError::Platform(format!(
                        "cannot name {} as a file:// URI",
                        f.stored.display()
                    ))
                })?;
                Ok(ferry_event::payload::OutputFile {
                    path: f.path,
                    uri: uri.to_string(),
                    size: f.size,
                })
            })
            .collect()
    }
}

/// Reads an archive of `base/` (every entry under `base/`), copying the regular files whose path
/// relative to it matches one of `patterns` to `dest/<relative path>`; on an error, removes
/// every file and directory it made.
pub fn extract(
    reader: impl Read,
    base: &str,
    patterns: &[glob::Pattern],
    dest: &Path,
    limits: Limits,
) -> Result<Extracted> {
    let mut made = Vec::new();
    let result = extract_into(reader, base, patterns, dest, limits, &mut made);
    if result.is_err() {
        for path in made.iter().rev() {
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir(path));
        }
    }
    result
}

fn extract_into(
    reader: impl Read,
    base: &str,
    patterns: &[glob::Pattern],
    dest: &Path,
    limits: Limits,
    made: &mut Vec<PathBuf>,
) -> Result<Extracted> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut out = Extracted::default();
    let mut total = 0u64;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| tar_error(base, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| tar_error(base, e))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = entry_path(&raw, base).map_err(|why| {
            ExtractError::Refused(format!(
                "outputFiles: the archive of the working directory holds the entry {raw:?}, which is refused: {why}; nothing was collected"
            ))
        })?;
        let Some(rel) = rel else { continue };
        if !patterns.iter().any(|p| p.matches_with(&rel, options)) {
            continue;
        }
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            if !kind.is_dir() {
                out.skipped.push(Skipped {
                    path: rel,
                    why: format!("{}; only regular files are collected", kind_name(kind)),
                });
            }
            continue;
        }
        let size = entry.size();
        if out.files.len() >= limits.max_files {
            return Err(ExtractError::Refused(format!(
                "outputFiles: more than {} files match; collect fewer (an archive of them, say)",
                limits.max_files
            )));
        }
        if size > limits.max_file_bytes {
            return Err(ExtractError::Refused(format!(
                "outputFiles: {rel:?} has {size} bytes, more than the {} accepted for one file",
                limits.max_file_bytes
            )));
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(ExtractError::Refused(format!(
                "outputFiles: the matching files add up to more than the {} bytes accepted",
                limits.max_total_bytes
            )));
        }
        let stored = dest.join(&rel);
        let io = |what: String| move |source| ExtractError::Io { what, source };
        let mut dir = dest.to_path_buf();
        for part in Path::new(&rel).parent().into_iter().flat_map(Path::components) {
            dir.push(part);
            // Not followed if it is a link: creating the directory then fails.
            if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                std::fs::create_dir(&dir).map_err(io(format!("cannot make {}", dir.display())))?;
                made.push(dir.clone());
            }
        }
        // create_new never follows a link at the last component, and every directory on the
        // way was made here: nothing is written outside `dest`.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&stored)
            .map_err(io(format!(
                "cannot store output file {rel:?} at {}",
                stored.display()
            )))?;
        made.push(stored.clone());
        let copied = std::io::copy(&mut entry.take(size), &mut file).map_err(io(format!(
            "cannot store output file {rel:?} at {}",
            stored.display()
        )))?;
        out.files.push(ExtractedFile {
            path: rel,
            stored,
            size: copied,
        });
    }
    // In the order of their paths, whatever order the archive had them in.
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The path of an archive entry relative to `base/`; `None` for `base` itself. Refuses what
/// could leave the destination: absolute names, `..`, backslashes, NUL, entries outside `base/`.
fn entry_path(raw: &str, base: &str) -> std::result::Result<Option<String>, &'static str> {
    let name = raw.trim_end_matches('/');
    if name.starts_with('/') {
        return Err("absolute names are not accepted");
    }
    if name.contains('\\') || name.contains('\0') {
        return Err("names with `\\` or NUL are not accepted");
    }
    let mut parts = name.split('/').filter(|c| !c.is_empty() && *c != ".");
    if parts.clone().any(|c| c == "..") {
        return Err("names with `..` are not accepted");
    }
    if parts.next() != Some(base) {
        return Err("every entry must be under the directory asked for");
    }
    let rest: Vec<&str> = parts.collect();
    Ok((!rest.is_empty()).then(|| rest.join("/")))
}

/// Appends `base/` and the input files under it, with the directories between them, to `tar`.
/// Every name is checked by the flow's own rule ([`ferry_flow::rules::input_file_name`]) before
/// anything is appended: a hostile name, a name given twice or a file that is also another's
/// directory refuses them all.
pub fn append_inputs(tar: &mut tar::Builder<Vec<u8>>, base: &str, files: &[InputFile]) -> Result<()> {
    let mut paths = Vec::with_capacity(files.len());
    let mut seen = BTreeSet::new();
    for f in files {
        let path = ferry_flow::rules::input_file_name(&f.path)
            .map_err(|why| ExtractError::Refused(format!("inputFiles: {:?} is refused: {why}", f.path)))?;
        if !seen.insert(path.clone()) {
            return Err(ExtractError::Refused(format!(
                "inputFiles: {:?} is given twice",
                f.path
            )));
        }
        paths.push(path);
    }
    let mut dirs = BTreeSet::new();
    for p in &paths {
        for a in p.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                dirs.insert(a.to_path_buf());
            }
        }
    }
    if let Some(clash) = paths.iter().find(|p| dirs.contains(*p)) {
        return Err(ExtractError::Refused(format!(
            "inputFiles: {:?} is both a file and the directory of another file",
            clash.display()
        )));
    }
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let io = |source| ExtractError::Io {
        what: "building the input files' archive".into(),
        source,
    };
    let mut dir_header = |path: &Path| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(mtime);
        tar.append_data(&mut h, path, std::io::empty()).map_err(io)
    };
    dir_header(Path::new(base))?;
    for d in &dirs {
        dir_header(&Path::new(base).join(d))?;
    }
    for (f, path) in files.iter().zip(&paths) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(f.contents.len() as u64);
        h.set_mtime(mtime);
        tar.append_data(&mut h, Path::new(base).join(path), f.contents.as_slice())
            .map_err(io)?;
    }
    Ok(())
}

/// The contents of the one file an archive of a single path holds (`tar -cf - FILE`, the
/// Docker engine's archive of a file): `None` for an empty archive (there was no such file).
/// Anything but a regular file there (a link, never followed; a directory; a pipe) or a file
/// larger than `max_bytes` is refused, naming it `shown`.
pub fn read_one(reader: impl Read, shown: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(|e| tar_error(shown, e))?;
    let Some(entry) = entries.next() else {
        return Ok(None);
    };
    let entry = entry.map_err(|e| tar_error(shown, e))?;
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        return Err(ExtractError::Refused(format!(
            "{shown} must be a regular file, and the task left {} there",
            kind_name(kind)
        )));
    }
    let mut contents = Vec::new();
    entry
        .take(max_bytes + 1)
        .read_to_end(&mut contents)
        .map_err(|e| tar_error(shown, e))?;
    if contents.len() as u64 > max_bytes {
        return Err(ExtractError::Refused(format!(
            "{shown} is larger than the {max_bytes} bytes accepted"
        )));
    }
    Ok(Some(contents))
}

pub fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Directory => "a directory",
        tar::EntryType::Fifo => "a named pipe",
        tar::EntryType::Char | tar::EntryType::Block => "a device",
        _ => "something other than a regular file",
    }
}

fn tar_error(what: &str, e: std::io::Error) -> ExtractError {
    ExtractError::Io {
        what: format!("reading the archive of {what}"),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/shadow").unwrap();
        }
        b.append_data(&mut h, "subtasks.json", data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn one_file_is_read_whole_and_anything_else_is_refused_by_name() {
        let one = archive(tar::EntryType::Regular, b"[]");
        assert_eq!(read_one(&one[..], "F", 2).unwrap().as_deref(), Some(&b"[]"[..]));
        assert_eq!(read_one(&b""[..], "F", 2).unwrap(), None);
        let e = read_one(&one[..], "F", 1).unwrap_err().to_string();
        assert_eq!(e, "F is larger than the 1 bytes accepted");
        for (kind, said) in [
            (tar::EntryType::Symlink, "a symbolic link"),
            (tar::EntryType::Fifo, "a named pipe"),
            (tar::EntryType::Directory, "a directory"),
        ] {
            let e = read_one(&archive(kind, b"")[..], "F", 10).unwrap_err();
            assert!(matches!(&e, ExtractError::Refused(m) if m.contains(said)), "{e}");
        }
    }
}
