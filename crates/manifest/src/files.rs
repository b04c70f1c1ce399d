//! Reading a file an app directory names, bounded (T18, T05): a hostile
//! app directory can plant `/dev/zero`, a FIFO, a socket or a huge file
//! where a manifest, lock, signature, key, certificate or component is
//! expected. [`read_bounded`] opens without blocking, refuses anything that
//! is not a regular file, and never reads more than its cap plus one byte.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Largest `bulkhead.toml`, `bulkhead.lock` or TLS PEM file read: 1 MiB.
pub const MAX_TEXT_BYTES: u64 = 1024 * 1024;

/// Largest component read: 256 MiB (no component is near it; a
/// WebAssembly component of a FaaS function is a few MiB).
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// The bytes of `path`, a regular file of at most `max_bytes` bytes.
///
/// Opened with `O_NONBLOCK`, so a FIFO does not block the open; checked
/// with `fstat` on the opened file, so what is read is what was checked
/// (a symlink is followed, to a regular file only). A device, FIFO,
/// socket or directory is refused with an error of kind `InvalidInput`
/// naming the path; a file larger than `max_bytes` with `FileTooLarge`
/// naming the cap. A missing file keeps its `NotFound` kind.
pub fn read_bounded(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not a regular file (a {}); put the real file there",
                path.display(),
                kind(&meta.file_type())
            ),
        ));
    }
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "`{}` is larger than the {max_bytes}-byte cap for this file; put the real file there",
                path.display()
            ),
        )
    };
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_bounded_text(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, max_bytes)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("`{}` is not UTF-8 text", path.display()),
        )
    })
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t18_devices_and_oversize_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_bounded(&zero, 16).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let big = dir.path().join("big");
        std::fs::write(&big, [0u8; 17]).unwrap();
        let e = read_bounded(&big, 16).unwrap_err();
        assert!(e.to_string().contains("16-byte cap"), "{e}");
        assert_eq!(read_bounded(&big, 17).unwrap().len(), 17);
        let e = read_bounded(dir.path(), 16).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }
}
