//! Reading the files the gateway is told to read: the config, certificates, keys.
//!
//! Every such path comes from an operator, so [`read`] trusts nothing about it:
//! - it opens without blocking (`O_NONBLOCK`), so a FIFO at a key's path cannot hang start-up
//!   or hold off SIGTERM, and checks the type of what it opened (not of a path that could be
//!   swapped in between): only a regular file is read, never `/dev/zero`, a FIFO or a socket;
//! - it reads at most [`FileKind::max_bytes`] (checked before and while reading), so a huge or
//!   growing file ends in an error, not the OOM killer;
//! - for secrets it checks the mode first: a key readable by anyone it should not be is
//!   refused with the `chmod` that fixes it;
//! - the buffer is wiped when dropped (`Zeroizing`), for keys and certificates alike.
//!
//! Every error names the file, what it was meant to be and the reason. No error ever
//! contains the file's content.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Who may read a file besides its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    /// Anyone may read it, but others may not write it (a CA or config writable by anyone
    /// would let them choose what the gateway trusts or does).
    Public,
    /// A secret the service's group may read (`root:vitalgate 0640`, docs/install.md); others
    /// get nothing, and only the owner may write.
    GroupReadable,
    /// A secret only its owner may touch (`0600`): the master key.
    OwnerOnly,
}

impl Secrecy {
    /// Mode bits that must be clear.
    fn forbidden_bits(self) -> u32 {
        match self {
            Secrecy::Public => 0o002,
            Secrecy::GroupReadable => 0o027,
            Secrecy::OwnerOnly => 0o077,
        }
    }

    fn fix(self) -> &'static str {
        match self {
            Secrecy::Public => "o-w",
            Secrecy::GroupReadable => "640",
            Secrecy::OwnerOnly => "600",
        }
    }
}

/// What a file is for, its size cap and its secrecy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKind {
    /// Named in errors, e.g. "CA file".
    pub what: &'static str,
    /// The most bytes it may have.
    pub max_bytes: u64,
    pub secrecy: Secrecy,
}

/// The configuration file (the reference config is ~5 KiB).
pub const CONFIG: FileKind = FileKind {
    what: "config file",
    max_bytes: 1024 * 1024,
    secrecy: Secrecy::Public,
};

/// The platform CA (a bundle of a few roots is tens of KiB).
pub const CA_FILE: FileKind = FileKind {
    what: "CA file",
    max_bytes: 1024 * 1024,
    secrecy: Secrecy::Public,
};

/// The client certificate chain.
pub const CERT_FILE: FileKind = FileKind {
    what: "client certificate file",
    max_bytes: 1024 * 1024,
    secrecy: Secrecy::Public,
};

/// The TLS client private key (an RSA 4096 PEM key is ~3.3 KiB).
pub const CLIENT_KEY: FileKind = FileKind {
    what: "client key file",
    max_bytes: 64 * 1024,
    secrecy: Secrecy::GroupReadable,
};

/// The master key file: 64 hex digits and a newline, or 32 raw bytes.
pub const MASTER_KEY: FileKind = FileKind {
    what: "master key file",
    max_bytes: 4096,
    secrecy: Secrecy::OwnerOnly,
};

/// The master key as a systemd credential: systemd sets its mode, so only type and size are
/// checked.
pub const MASTER_KEY_CREDENTIAL: FileKind = FileKind {
    what: "master key credential",
    max_bytes: 4096,
    secrecy: Secrecy::Public,
};

/// A device profile (`devices/*.toml`; the largest shipped is ~3 KiB).
pub const DEVICE_PROFILE: FileKind = FileKind {
    what: "device profile",
    max_bytes: 256 * 1024,
    secrecy: Secrecy::Public,
};

/// Why a file was not read. Never holds any of its content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {what} does not exist{hint}", hint = crate::sandbox::missing_file_hint(path))]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: cannot read the {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: the {what} is {found}, not a regular file")]
    NotRegular {
        path: PathBuf,
        what: &'static str,
        found: &'static str,
    },
    #[error("{path}: the {what} is larger than {max} bytes; is this the right file?")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        max: u64,
    },
    #[error("{path}: the {what} is {who} (mode {mode:04o}); run `chmod {fix} {path}`")]
    Exposed {
        path: PathBuf,
        what: &'static str,
        who: &'static str,
        mode: u32,
        fix: &'static str,
    },
}

impl FileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Missing { path, .. }
            | FileError::Io { path, .. }
            | FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::Exposed { path, .. } => path,
        }
    }
}

/// Describes a file type for an error message.
pub fn type_name(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Checks type, mode and size of what `meta` describes against `kind`.
fn check(path: &Path, meta: &Metadata, kind: &FileKind) -> Result<(), FileError> {
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
            what: kind.what,
            found: type_name(meta.file_type()),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let bad = mode & kind.secrecy.forbidden_bits();
    if bad != 0 {
        let who = if kind.secrecy == Secrecy::Public {
            "writable by others"
        } else if bad & 0o007 != 0 {
            "open to others"
        } else {
            "open to its group"
        };
        return Err(FileError::Exposed {
            path: path.to_owned(),
            what: kind.what,
            who,
            mode,
            fix: kind.secrecy.fix(),
        });
    }
    if meta.len() > kind.max_bytes {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            what: kind.what,
            max: kind.max_bytes,
        });
    }
    Ok(())
}

/// Opens without blocking and checks what was opened.
fn open_checked(path: &Path, kind: &FileKind) -> Result<File, FileError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FileError::Missing {
                path: path.to_owned(),
                what: kind.what,
            }
        } else {
            FileError::Io {
                path: path.to_owned(),
                what: kind.what,
                source,
            }
        }
    };
    // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one;
    // O_NOCTTY: a terminal at this path never becomes our controlling terminal.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check(path, &meta, kind)?;
    Ok(file)
}

/// Checks `path` as [`read`] would, without reading it (for `check-config`).
pub fn inspect(path: &Path, kind: &FileKind) -> Result<(), FileError> {
    open_checked(path, kind).map(drop)
}

/// Reads a whole file after checking its type, mode and size (see the module doc).
pub fn read(path: &Path, kind: &FileKind) -> Result<Zeroizing<Vec<u8>>, FileError> {
    let file = open_checked(path, kind)?;
    let mut buf = Zeroizing::new(Vec::new());
    // Reserve once: a growing Vec would leave copies of the content behind in freed memory.
    let expected = file.metadata().map(|m| m.len()).unwrap_or(0);
    buf.reserve_exact(usize::try_from(expected.min(kind.max_bytes)).unwrap_or(0) + 1);
    file.take(kind.max_bytes + 1)
        .read_to_end(&mut buf)
        .map_err(|source| FileError::Io {
            path: path.to_owned(),
            what: kind.what,
            source,
        })?;
    if buf.len() as u64 > kind.max_bytes {
        // It grew while being read.
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            what: kind.what,
            max: kind.max_bytes,
        });
    }
    Ok(buf)
}

/// Reads a UTF-8 text file (the config) with the same checks as [`read`].
pub fn read_to_string(path: &Path, kind: &FileKind) -> Result<String, FileError> {
    let bytes = read(path, kind)?;
    String::from_utf8(bytes.to_vec()).map_err(|e| FileError::Io {
        path: path.to_owned(),
        what: kind.what,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_regular_file_within_its_cap_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "ca.pem", b"hello", 0o644);
        assert_eq!(read(&p, &CA_FILE).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn a_character_device_is_refused_without_reading_it() {
        let e = read(Path::new("/dev/zero"), &CA_FILE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/zero: the CA file is a character device, not a regular file"
        );
    }

    #[test]
    fn a_fifo_without_a_writer_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let ok = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(ok.success());
        // A blocking open would wait here for a writer forever.
        let e = read(&p, &MASTER_KEY).unwrap_err();
        assert!(
            matches!(e, FileError::NotRegular { found, .. } if found.contains("FIFO")),
            "{e}"
        );
    }

    #[test]
    fn a_directory_is_refused_naming_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), &CONFIG).unwrap_err().to_string();
        assert!(
            e.ends_with("the config file is a directory, not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn a_file_over_its_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "k", &[b'a'; 4097], 0o600);
        let e = read(&p, &MASTER_KEY).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { max: 4096, .. }), "{e}");
    }

    #[test]
    fn a_missing_file_is_named_as_missing() {
        let e = read(Path::new("/nonexistent/ca.pem"), &CA_FILE).unwrap_err();
        assert_eq!(e.to_string(), "/nonexistent/ca.pem: CA file does not exist");
    }

    #[test]
    fn a_client_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "client.key", b"k", 0o644);
        let e = read(&p, &CLIENT_KEY).unwrap_err().to_string();
        assert!(e.contains("open to others (mode 0644)"), "{e}");
        assert!(e.contains("chmod 640"), "{e}");
    }

    #[test]
    fn a_client_key_readable_by_its_group_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "client.key", b"k", 0o640);
        assert!(read(&p, &CLIENT_KEY).is_ok());
    }

    #[test]
    fn a_master_key_readable_by_its_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "master.key", b"k", 0o640);
        let e = read(&p, &MASTER_KEY).unwrap_err().to_string();
        assert!(
            e.contains("open to its group") && e.contains("chmod 600"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_writable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_with(dir.path(), "ca.pem", b"x", 0o666);
        let e = read(&p, &CA_FILE).unwrap_err().to_string();
        assert!(e.contains("writable by others"), "{e}");
    }
}
