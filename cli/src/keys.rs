//! `ferry key create FILE` and `ferry key add FILE`: the bus key file every service of a
//! deployment shares (see `ferry_bus::signing` and docs/security.md).
//!
//! The file holds one key a line, `KEY-ID SECRET`; the first key signs, every key verifies.
//! Both commands write it readable by its owner only.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_bus::signing::{Keyring, new_key_file, new_key_line};

/// Creates a key file holding one new key; refuses to overwrite one. Returns the key's id.
pub fn create(path: &Path) -> Result<String> {
    let (text, id) = new_key_file();
    let mut file = private_options()
        .create_new(true)
        .open(path)
        .with_context(|| match path.exists() {
            true => format!(
                "{} exists: ferry does not overwrite a key file (services would stop accepting each other's events); \
                 use `ferry key add` to rotate",
                path.display()
            ),
            false => format!("cannot create the key file {}", path.display()),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the key file {}", path.display()))?;
    Ok(id)
}

/// Adds a new key to a key file: last (accepted, not yet signing), or first with `sign` (it
/// signs from the services' next start). Returns the key's id.
pub fn add(path: &Path, sign: bool) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    // Refuse to build on a file the services could not read.
    Keyring::parse(&text, &path.display().to_string())?;
    let (line, id) = new_key_line();
    let mut out = String::with_capacity(text.len() + line.len() + 1);
    let mut placed = false;
    for l in text.lines() {
        let is_key = !l.trim().is_empty() && !l.trim_start().starts_with('#');
        if sign && is_key && !placed {
            out.push_str(&line);
            out.push('\n');
            placed = true;
        }
        out.push_str(l);
        out.push('\n');
    }
    if !placed {
        out.push_str(&line);
        out.push('\n');
    }
    // Written beside it and renamed over it: a service starting meanwhile reads one or the other.
    let tmp = path.with_extension("new");
    let mut file = private_options()
        .create(true)
        .truncate(true)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(out.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(id)
}

/// Loads the key file `ferry up` keeps in its data directory, creating it on the first start.
/// Returns the keyring and whether it was created.
pub fn load_or_create(path: &Path) -> Result<(Keyring, bool)> {
    let created = match create(path) {
        Ok(_) => true,
        Err(_) if path.exists() => false,
        Err(e) => return Err(e),
    };
    let keys = Keyring::load(path)?;
    if keys.ids().is_empty() {
        bail!("{} holds no key", path.display());
    }
    Ok((keys, created))
}

fn private_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.keys");
        let id = create(&path).unwrap();
        assert_eq!(Keyring::load(&path).unwrap().ids(), [id.as_str()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        let err = create(&path).unwrap_err().to_string();
        assert!(err.contains("does not overwrite"), "{err}");
        assert_eq!(Keyring::load(&path).unwrap().ids(), [id.as_str()]);
    }

    #[test]
    fn keys_are_added_last_to_be_accepted_or_first_to_sign() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.keys");
        let first = create(&path).unwrap();
        let accepted = add(&path, false).unwrap();
        assert_eq!(
            Keyring::load(&path).unwrap().ids(),
            [first.as_str(), accepted.as_str()]
        );
        let signing = add(&path, true).unwrap();
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.ids(), [signing.as_str(), first.as_str(), accepted.as_str()]);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("# ferry bus keys")
        );
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(add(&path, false).is_err(), "a broken file is not built on");
    }
}
