//! The busybox initramfs that runs one command in a Linux guest (`faultline run --kernel K --
//! CMD ARGS`).
//!
//! The archive is an uncompressed `newc` cpio (the format `usr/gen_init_cpio.c` writes and
//! `init/initramfs.c` unpacks): a gzip initramfs costs ~27 s to unpack on the nested KVM this
//! was developed on, an uncompressed one almost nothing. It holds a static busybox,
//! `/bin/sh`, `/dev/console`, and `/init` from `resources/initramfs/init`, which mounts
//! proc/sys/dev, runs `/faultline/cmd`, prints its status and hands the status to the VMM
//! through the debug-exit port. `resources/initramfs/build.sh` builds the same archive by hand.
//!
//! # Applet links
//! [`Applets::Shell`] (what `faultline run -- CMD` gets) links only `/bin/sh`: Debian's
//! busybox-static runs its applets from the shell without them (`FEATURE_SH_STANDALONE`,
//! `FEATURE_PREFER_APPLETS`), so `-- ls /sys` and `sh -c '...'` work, as does `system()`
//! from a guest program; what needs the file `/bin/ls` itself (an absolute applet path, or a
//! program other than busybox that execs an applet by name) needs [`Applets::All`]. The
//! kernel unpacks each archive member with several path walks (`do_symlink()` and
//! `clean_path()` in init/initramfs.c), all emulated on this project's hosts: busybox's 280
//! links made the unpack 5.2 s instead of 1.6 s, and the boot to init 2.3 s longer
//! (README, Known problems). `faultline test mm` takes [`Applets::All`]: the selftests'
//! bash finds its tools through `PATH`.
//!
//! The command lives in a second, tiny archive ([`command_cpio`]) appended to the first;
//! the kernel unpacks concatenated archives in order, so a user's own `--initrd` built on
//! this init can be given a command the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's `/init`, shared with `resources/initramfs/build.sh`.
pub const INIT_SCRIPT: &str = include_str!("../../../resources/initramfs/init");

/// Environment variable naming the static busybox to put in the initramfs.
pub const BUSYBOX_ENV: &str = "FAULTLINE_BUSYBOX";
/// Where Debian's busybox-static installs busybox.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Building the busybox initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Busybox missing or unreadable.
    #[error("Cannot read busybox at {path:?} ({source}); install it (apt-get install busybox-static) or set {BUSYBOX_ENV}")]
    BusyboxUnreadable {
        /// The busybox path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Busybox is dynamically linked: it would not run in a guest without its libraries.
    #[error("Busybox at {path:?} is not a static x86-64 executable; install busybox-static (apt-get install busybox-static) or point {BUSYBOX_ENV} at a static busybox")]
    BusyboxNotStatic {
        /// The busybox path.
        path: PathBuf,
    },
    /// `busybox --list-full` failed.
    #[error("Cannot list busybox applets with `{path:?} --list-full`: {reason}")]
    BusyboxList {
        /// The busybox path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file is too large for the newc format (4 GiB).
    #[error("{name} is {size} bytes, too large for a cpio archive (4 GiB limit)")]
    TooLarge {
        /// Archive member name.
        name: String,
        /// Its size.
        size: usize,
    },
}

/// One member of a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A directory.
    Dir {
        /// Path inside the archive, no leading `/`.
        name: &'a str,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the archive, no leading `/`.
        name: &'a str,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: &'a [u8],
    },
    /// A symbolic link.
    Symlink {
        /// Path inside the archive.
        name: &'a str,
        /// What it points to.
        target: &'a str,
    },
    /// A character device node.
    CharDev {
        /// Path inside the archive.
        name: &'a str,
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a `newc` cpio archive ("070701" headers, 4-byte alignment, `TRAILER!!!`).
///
/// Models the format `usr/gen_init_cpio.c` writes and `init/initramfs.c` parses (see
/// Documentation/driver-api/early-userspace/buffer-format.rst). All members are owned by
/// root with mtime 0, so the same inputs give the same bytes.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        CpioWriter {
            buf: Vec::new(),
            ino: 721,
        }
    }

    /// Appends one member.
    pub fn add(&mut self, entry: &Entry<'_>) -> Result<(), InitramfsError> {
        let (name, mode, data, rdev) = match *entry {
            Entry::Dir { name, mode } => (name, S_IFDIR | mode, &[][..], (0, 0)),
            Entry::File { name, mode, data } => (name, S_IFREG | mode, data, (0, 0)),
            Entry::Symlink { name, target } => (name, S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
            Entry::CharDev {
                name,
                mode,
                major,
                minor,
            } => (name, S_IFCHR | mode, &[][..], (major, minor)),
        };
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        self.header(name, mode, nlink, data, rdev)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> Result<(), InitramfsError> {
        let size = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
            name: name.to_string(),
            size: data.len(),
        })?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| InitramfsError::TooLarge {
            name: name.to_string(),
            size: name.len(),
        })?;
        self.ino += 1;
        // c_magic, then c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_devmajor
        // c_devminor c_rdevmajor c_rdevminor c_namesize c_check, 8 hex digits each.
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        // Cannot fail: empty name and data.
        let _ = self.header("TRAILER!!!", 0, 1, &[], (0, 0));
        self.buf
    }
}

/// Quotes `words` as one line of POSIX shell: each word in single quotes, with `'` written
/// as `'\''`. Any byte but NUL survives.
pub fn shell_quote(words: &[String]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    quoted.join(" ")
}

/// A cpio archive holding only `/faultline/cmd`, the command `/init` runs.
pub fn command_cpio(command: &[String]) -> Result<Vec<u8>, InitramfsError> {
    let script = format!("{}\n", shell_quote(command));
    let mut w = CpioWriter::new();
    w.add(&Entry::Dir {
        name: "faultline",
        mode: 0o755,
    })?;
    w.add(&Entry::File {
        name: "faultline/cmd",
        mode: 0o644,
        data: script.as_bytes(),
    })?;
    Ok(w.finish())
}

/// The busybox to use: `$FAULTLINE_BUSYBOX`, else `/bin/busybox`.
pub fn busybox_path() -> PathBuf {
    std::env::var_os(BUSYBOX_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BUSYBOX))
}

/// True if `elf` is a 64-bit x86 executable without a `PT_INTERP` program header (a static
/// binary that needs no dynamic loader in the guest).
pub(crate) fn is_static_x86_64_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let le16 = |o: usize| field(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let le32 = |o: usize| field(o, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let le64 = |o: usize| {
        field(o, 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB; e_machine EM_X86_64 (62).
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") || le16(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (le64(32), le16(54), le16(56)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    // The offsets come from the file: an overflow means a header past its end.
    (0..usize::from(phnum)).all(|i| {
        i.checked_mul(usize::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .and_then(le32)
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// Which busybox applets get a link in the archive (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applets {
    /// `/bin/sh` only: the shell runs every other applet itself.
    Shell,
    /// Every applet at its usual path (`busybox --list-full`).
    All,
}

/// Builds the whole busybox initramfs: busybox and the `applets` links, `/dev/console`,
/// `/init`, and the command (if any) appended as a second archive.
pub fn build(
    busybox: &Path,
    command: &[String],
    applets: Applets,
) -> Result<Vec<u8>, InitramfsError> {
    let bb = std::fs::read(busybox).map_err(|source| InitramfsError::BusyboxUnreadable {
        path: busybox.to_path_buf(),
        source,
    })?;
    if !is_static_x86_64_elf(&bb) {
        return Err(InitramfsError::BusyboxNotStatic {
            path: busybox.to_path_buf(),
        });
    }
    let list_err = |reason: String| InitramfsError::BusyboxList {
        path: busybox.to_path_buf(),
        reason,
    };
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| list_err(e.to_string()))?;
    if !out.status.success() {
        return Err(list_err(format!("it exited with {}", out.status)));
    }
    let list = String::from_utf8(out.stdout).map_err(|e| list_err(e.to_string()))?;

    let mut w = CpioWriter::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "etc",
        "faultline",
    ] {
        w.add(&Entry::Dir {
            name: dir,
            mode: 0o755,
        })?;
    }
    w.add(&Entry::CharDev {
        name: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    })?;
    w.add(&Entry::File {
        name: "bin/busybox",
        mode: 0o755,
        data: &bb,
    })?;
    w.add(&Entry::File {
        name: "init",
        mode: 0o755,
        data: INIT_SCRIPT.as_bytes(),
    })?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let applet = applet.trim_start_matches('/');
        if applet == "bin/busybox"
            || applet.contains("..")
            || (applets == Applets::Shell && applet != "bin/sh")
        {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        w.add(&Entry::Symlink {
            name: applet,
            target: &target,
        })?;
    }
    let mut archive = w.finish();
    if !command.is_empty() {
        archive.extend_from_slice(&command_cpio(command)?);
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, rdevmajor, rdevminor, data).
    fn parse(mut buf: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = buf.len();
        loop {
            assert_eq!(&buf[..6], b"070701", "bad magic at {}", total - buf.len());
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + namesize as usize;
            let name = std::str::from_utf8(&buf[110..name_end - 1])
                .unwrap()
                .to_string();
            assert_eq!(buf[name_end - 1], 0);
            let data_start = name_end.next_multiple_of(4);
            let data_end = data_start + size as usize;
            let data = buf[data_start..data_end].to_vec();
            buf = &buf[data_end.next_multiple_of(4).min(buf.len())..];
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn cpio_members_round_trip_with_alignment() {
        let mut w = CpioWriter::new();
        w.add(&Entry::Dir {
            name: "d",
            mode: 0o755,
        })
        .unwrap();
        w.add(&Entry::File {
            name: "d/file",
            mode: 0o644,
            data: b"abcde",
        })
        .unwrap();
        w.add(&Entry::Symlink {
            name: "d/l",
            target: "file",
        })
        .unwrap();
        w.add(&Entry::CharDev {
            name: "console",
            mode: 0o600,
            major: 5,
            minor: 1,
        })
        .unwrap();
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        let m = parse(&a);
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].0.as_str(), m[0].1), ("d", S_IFDIR | 0o755));
        assert_eq!(m[1].4, b"abcde");
        assert_eq!((m[2].1, m[2].4.as_slice()), (S_IFLNK | 0o777, &b"file"[..]));
        assert_eq!((m[3].1, m[3].2, m[3].3), (S_IFCHR | 0o600, 5, 1));
    }

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        let words = vec!["sh".into(), "-c".into(), "echo 'a b'; exit 7".into()];
        assert_eq!(
            shell_quote(&words),
            r#"'sh' '-c' 'echo '\''a b'\''; exit 7'"#
        );
        // The real shell reads it back into the same words.
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for w in {}; do printf '<%s>' \"$w\"; done",
                shell_quote(&words)
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "<sh><-c><echo 'a b'; exit 7>"
        );
    }

    #[test]
    fn command_cpio_holds_the_quoted_command() {
        let m = parse(&command_cpio(&["true".into()]).unwrap());
        assert_eq!(m[1].0, "faultline/cmd");
        assert_eq!(m[1].4, b"'true'\n");
    }

    #[test]
    fn static_elf_check_rejects_dynamic_binaries_and_non_elf() {
        // /bin/sh on the build host is dynamically linked.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_x86_64_elf(&sh));
        assert!(!is_static_x86_64_elf(b"#!/bin/sh\n"));
        let e = build(Path::new("/bin/sh"), &[], Applets::Shell).unwrap_err();
        assert!(e.to_string().contains("busybox-static"), "{e}");
        let e = build(Path::new("/nonexistent/busybox"), &[], Applets::All).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/busybox"), "{e}");
    }

    #[test]
    fn busybox_initramfs_has_init_console_and_applets() {
        let bb = busybox_path();
        if bb == Path::new("/bin/busybox") {
            crate::skip_unless!(crate::testing::require_packages(&["busybox-static"]));
        }
        if !bb.exists() {
            crate::testing::skip(
                &crate::testing::current_test_name(module_path!()),
                &format!("no busybox at {bb:?}: set FAULTLINE_BUSYBOX to a static busybox"),
            );
            return;
        }
        let a = build(&bb, &["echo".into(), "hi".into()], Applets::All).unwrap();
        // Two archives back to back: the base one and the command.
        let first = parse(&a);
        let names: Vec<&str> = first.iter().map(|m| m.0.as_str()).collect();
        for want in ["init", "bin/busybox", "dev/console", "bin/sh", "bin/mount"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // The shell-only archive: the same but for the other links.
        let lean = build(&bb, &[], Applets::Shell).unwrap();
        let lean = parse(&lean);
        let lean: Vec<&str> = lean.iter().map(|m| m.0.as_str()).collect();
        for want in ["init", "bin/busybox", "dev/console", "bin/sh"] {
            assert!(lean.contains(&want), "{want} missing from {lean:?}");
        }
        assert!(!lean.contains(&"bin/mount"), "{lean:?}");
        assert!(
            names.len() > lean.len() + 100,
            "{} vs {}",
            names.len(),
            lean.len()
        );
        let init = first.iter().find(|m| m.0 == "init").unwrap();
        assert_eq!(init.1, S_IFREG | 0o755);
        let tail = a
            .windows(13)
            .position(|w| w == b"faultline/cmd")
            .expect("command archive appended");
        assert!(tail > 0);
    }
}
