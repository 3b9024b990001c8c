//! Files into a container before it starts, and out of it after it ends, through the engine's
//! archive API — no shared disk between the launcher and the engine is needed.
//!
//! Going in, names are checked by the flow's own rule ([`ferry_flow::rules::input_file_name`])
//! before anything is sent. Coming out, the archive is read as a stream and only regular files
//! that match a pattern are kept: symbolic and hard links are reported and never followed (a
//! link to `/etc/shadow` yields the link, not the file), an entry whose name would leave the
//! destination is refused with everything collected so far removed, and sizes are capped.

use std::io::Read;
use std::path::Path;

use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder};
use bytes::Bytes;
use ferry_launcher::archive::ExtractError;
use futures::{Stream, StreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::Engine;
use crate::error::{Error, Result, status_of};

pub use ferry_launcher::archive::{
    Extracted as Collected, ExtractedFile as CollectedFile, InputFile, Limits, Skipped,
};

impl Engine {
    /// Makes `dir` (absolute, not `/`) in a created container, owned by the container's user,
    /// and writes `files` into it. Every name is checked before anything is sent, and one
    /// refused name sends nothing.
    pub async fn put_files(&self, name: &str, dir: &str, files: &[InputFile]) -> Result<()> {
        let (parent, base) = split_dir(dir)?;
        let archive = input_archive(&base, files)?;
        let options = UploadToContainerOptionsBuilder::default()
            .path(&parent)
            // Owned by the container's user, so that a task not running as root can write there.
            .copy_uidgid("1")
            .build();
        self.docker
            .upload_to_container(name, Some(options), bollard::body_full(Bytes::from(archive)))
            .await
            .map_err(|e| self.not_found_or(name, "archive upload", e))
    }

    /// Makes each directory of `dirs` with its files, as [`Engine::put_files`] does, in one
    /// upload when they are all in the same directory (the working directory and the outputs'
    /// directory at the root, as they are by default): each upload mounts the container's
    /// filesystem in the engine, which is most of an upload's cost.
    pub async fn put_dirs(&self, name: &str, dirs: &[(&str, &[InputFile])]) -> Result<()> {
        let mut split = Vec::with_capacity(dirs.len());
        for (dir, files) in dirs {
            let (parent, base) = split_dir(dir)?;
            split.push((parent, base, *files));
        }
        if split.windows(2).any(|w| w[0].0 != w[1].0) {
            for (dir, files) in dirs {
                self.put_files(name, dir, files).await?;
            }
            return Ok(());
        }
        let Some(parent) = split.first().map(|(p, _, _)| p.clone()) else {
            return Ok(());
        };
        let mut tar = tar::Builder::new(Vec::new());
        for (_, base, files) in &split {
            append_dir(&mut tar, base, files)?;
        }
        let archive = tar.into_inner().map_err(archive_io)?;
        let options = UploadToContainerOptionsBuilder::default()
            .path(&parent)
            .copy_uidgid("1")
            .build();
        self.docker
            .upload_to_container(name, Some(options), bollard::body_full(Bytes::from(archive)))
            .await
            .map_err(|e| self.not_found_or(name, "archive upload", e))
    }

    /// The contents of one regular file of the container; `None` when there is no such file.
    /// A file larger than `max_bytes`, or a path that is a link or a directory, is refused.
    pub async fn read_file(&self, name: &str, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let Some(body) = self.archive(name, path).await? else {
            return Ok(None);
        };
        let shown = path.to_string();
        blocking(body, move |reader| {
            ferry_launcher::archive::read_one(reader, &shown, max_bytes).map_err(|e| match e {
                ExtractError::Refused(m) => Error::Refused(m),
                ExtractError::Io { what, source } => Error::Io { what, source },
            })
        })
        .await
    }

    /// Copies the regular files under `dir` whose path relative to it matches one of
    /// `patterns` into `dest` (an existing directory of the launcher's), keeping their relative
    /// paths. On an error, nothing collected so far is left in `dest`.
    pub async fn collect_files(
        &self,
        name: &str,
        dir: &str,
        patterns: &[String],
        dest: &Path,
        limits: Limits,
    ) -> Result<Collected> {
        let mut compiled = Vec::with_capacity(patterns.len());
        for p in patterns {
            ferry_flow::rules::output_pattern(p)
                .map_err(|why| Error::Refused(format!("outputFiles: pattern {p:?} is refused: {why}")))?;
            compiled.push(
                glob::Pattern::new(p)
                    .map_err(|e| Error::Refused(format!("outputFiles: pattern {p:?} is invalid: {e}")))?,
            );
        }
        if compiled.is_empty() {
            return Ok(Collected::default());
        }
        let (_, base) = split_dir(dir)?;
        let Some(body) = self.archive(name, dir).await? else {
            return Ok(Collected::default());
        };
        let dest = dest.to_path_buf();
        blocking(body, move |reader| {
            extract(reader, &base, &compiled, &dest, limits)
        })
        .await
    }

    /// The engine's tar stream of `path`; `None` when the container has no such path.
    async fn archive(
        &self,
        name: &str,
        path: &str,
    ) -> Result<Option<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static>> {
        let options = DownloadFromContainerOptionsBuilder::default().path(path).build();
        let mut body = self.docker.download_from_container(name, Some(options)).boxed();
        let first = match body.next().await {
            Some(Err(e)) if status_of(&e) == Some(404) => {
                // No such container, or no such path in it.
                self.inspect(name).await?;
                return Ok(None);
            }
            Some(Err(e)) => return Err(Error::api(&self.host, "archive download", e)),
            first => first,
        };
        Ok(Some(
            futures::stream::iter(first)
                .chain(body)
                .map(|r| r.map_err(std::io::Error::other)),
        ))
    }
}

/// Runs a reader of the archive stream on a blocking thread.
async fn blocking<T: Send + 'static>(
    body: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    read: impl FnOnce(
        SyncIoBridge<StreamReader<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Unpin>, Bytes>>,
    ) -> Result<T>
    + Send
    + 'static,
) -> Result<T> {
    let body: Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Unpin> = Box::new(body);
    let reader = SyncIoBridge::new(StreamReader::new(body));
    tokio::task::spawn_blocking(move || read(reader))
        .await
        .map_err(|e| Error::Io {
            what: "reading a container archive".into(),
            source: std::io::Error::other(e),
        })?
}

/// `/a/b/work` → (`/a/b`, `work`).
fn split_dir(dir: &str) -> Result<(String, String)> {
    let trimmed = dir.trim_end_matches('/');
    let refuse = || {
        Error::Refused(format!(
            "the working directory `{dir}` must be an absolute path below `/` without `.` or `..` in it"
        ))
    };
    if !trimmed.starts_with('/') || trimmed.split('/').any(|c| c == "." || c == "..") {
        return Err(refuse());
    }
    let (parent, base) = trimmed.rsplit_once('/').ok_or_else(refuse)?;
    if base.is_empty() {
        return Err(refuse());
    }
    Ok((
        if parent.is_empty() {
            "/".into()
        } else {
            parent.into()
        },
        base.into(),
    ))
}

/// A tar of `base/` and the files under it, with the directories between them.
fn input_archive(base: &str, files: &[InputFile]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_dir(&mut tar, base, files)?;
    tar.into_inner().map_err(archive_io)
}

fn archive_io(e: std::io::Error) -> Error {
    Error::Io {
        what: "building the input files' archive".into(),
        source: e,
    }
}

/// Appends `base/` and the files under it, with the directories between them, to `tar`.
fn append_dir(tar: &mut tar::Builder<Vec<u8>>, base: &str, files: &[InputFile]) -> Result<()> {
    ferry_launcher::archive::append_inputs(tar, base, files).map_err(|e| match e {
        ExtractError::Refused(m) => Error::Refused(m),
        ExtractError::Io { source, .. } => archive_io(source),
    })
}

/// Reads the engine's archive of `base/`, keeping what matches ([`ferry_launcher::archive`]).
fn extract(
    reader: impl Read,
    base: &str,
    patterns: &[glob::Pattern],
    dest: &Path,
    limits: Limits,
) -> Result<Collected> {
    ferry_launcher::archive::extract(reader, base, patterns, dest, limits).map_err(|e| match e {
        ExtractError::Refused(m) => Error::Refused(m),
        ExtractError::Io { what, source } => Error::Io { what, source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Raw names: `append_data` would refuse `..`, which is the point of the test.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn run(archive: &[u8], patterns: &[&str], limits: Limits) -> (Result<Collected>, tempfile::TempDir) {
        let dest = tempfile::tempdir().unwrap();
        let patterns: Vec<_> = patterns.iter().map(|p| glob::Pattern::new(p).unwrap()).collect();
        let r = extract(archive, "work", &patterns, dest.path(), limits);
        (r, dest)
    }

    const F: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn matching_regular_files_are_copied_and_links_reported() {
        let archive = tar_of(&[
            ("work/", tar::EntryType::Directory, b"", None),
            ("work/out/a.json", F, b"{}", None),
            ("work/out/deep/b.json", F, b"[1]", None),
            (
                "work/out/leak.json",
                tar::EntryType::Symlink,
                b"",
                Some("/etc/shadow"),
            ),
            (
                "work/out/hard.json",
                tar::EntryType::Link,
                b"",
                Some("work/out/a.json"),
            ),
            ("work/scratch.bin", F, b"xxxx", None),
        ]);
        let (r, dest) = run(&archive, &["out/**/*.json"], Limits::default());
        let c = r.unwrap();
        let paths: Vec<_> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["out/a.json", "out/deep/b.json"]);
        assert_eq!(
            std::fs::read(dest.path().join("out/deep/b.json")).unwrap(),
            b"[1]"
        );
        assert!(!dest.path().join("scratch.bin").exists());
        let skipped: Vec<_> = c
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.why.as_str()))
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].1.starts_with("a symbolic link"), "{skipped:?}");
        assert!(skipped[1].1.starts_with("a hard link"), "{skipped:?}");
    }

    #[test]
    fn hostile_names_refuse_the_whole_archive_and_leave_nothing() {
        for hostile in ["work/../../escape", "/etc/cron.d/x", "other/a", "work/a\\..\\b"] {
            let archive = tar_of(&[("work/first.txt", F, b"1", None), (hostile, F, b"x", None)]);
            let (r, dest) = run(&archive, &["**/*"], Limits::default());
            let e = r.unwrap_err();
            assert!(matches!(e, Error::Refused(_)), "{hostile}: {e}");
            assert!(e.to_string().contains("nothing was collected"), "{e}");
            let left: Vec<_> = std::fs::read_dir(dest.path()).unwrap().collect();
            assert!(left.is_empty(), "{hostile}: {left:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let archive = tar_of(&[("work/a", F, b"12345", None), ("work/b", F, b"12345", None)]);
        let few = Limits {
            max_files: 1,
            ..Limits::default()
        };
        assert!(
            run(&archive, &["*"], few)
                .0
                .unwrap_err()
                .to_string()
                .contains("more than 1 files")
        );
        let small = Limits {
            max_file_bytes: 4,
            ..Limits::default()
        };
        assert!(
            run(&archive, &["*"], small)
                .0
                .unwrap_err()
                .to_string()
                .contains("5 bytes")
        );
        let total = Limits {
            max_total_bytes: 9,
            ..Limits::default()
        };
        assert!(
            run(&archive, &["*"], total)
                .0
                .unwrap_err()
                .to_string()
                .contains("add up")
        );
        assert_eq!(run(&archive, &["*"], Limits::default()).0.unwrap().files.len(), 2);
    }

    #[test]
    fn input_archives_refuse_hostile_names_and_clashes() {
        let file = |p: &str| InputFile {
            path: p.into(),
            contents: b"x".to_vec(),
        };
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            let e = input_archive("work", &[file("ok"), file(bad)]).unwrap_err();
            assert!(e.to_string().starts_with("inputFiles:"), "{e}");
        }
        assert!(input_archive("work", &[file("a"), file("./a")]).is_err());
        assert!(input_archive("work", &[file("a"), file("a/b")]).is_err());
        let archive = input_archive("work", &[file("d/e/f.txt"), file("g")]).unwrap();
        let mut names: Vec<String> = tar::Archive::new(archive.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["work", "work/d", "work/d/e", "work/d/e/f.txt", "work/g"]);
    }

    #[test]
    fn directories_split_into_parent_and_name() {
        assert_eq!(split_dir("/work").unwrap(), ("/".into(), "work".into()));
        assert_eq!(split_dir("/a/b/").unwrap(), ("/a".into(), "b".into()));
        for bad in ["/", "work", "/a/../b", ""] {
            assert!(split_dir(bad).is_err(), "{bad}");
        }
    }
}
