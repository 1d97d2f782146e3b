//! The initramfs: a `newc` cpio archive, the format the kernel unpacks
//! into its rootfs before running `/init`.
//!
//! Written by hand (the format is a 110-byte ASCII header, the name and
//! the data, each padded to 4 bytes) because the archive holds five fixed
//! entries; a cpio crate would bring a reader and a builder API for
//! nothing more. Every field ktstr controls is fixed (uid 0, mtime 0,
//! inode numbers in order), so the same init makes the same bytes.

/// `S_IFDIR`, `S_IFCHR`, `S_IFREG` as cpio stores them in `mode`.
const DIR: u32 = 0o040000;
const CHR: u32 = 0o020000;
const REG: u32 = 0o100000;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// File type and permission bits.
    pub mode: u32,
    /// Device number (major, minor) of a character device.
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

impl Entry {
    pub fn dir(name: &str) -> Self {
        Self::new(name, DIR | 0o755, (0, 0), Vec::new())
    }

    pub fn char_device(name: &str, perm: u32, major: u32, minor: u32) -> Self {
        Self::new(name, CHR | perm, (major, minor), Vec::new())
    }

    pub fn file(name: &str, perm: u32, data: Vec<u8>) -> Self {
        Self::new(name, REG | perm, (0, 0), data)
    }

    fn new(name: &str, mode: u32, rdev: (u32, u32), data: Vec<u8>) -> Self {
        Self {
            name: name.to_string(),
            mode,
            rdev,
            data,
        }
    }
}

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// The initramfs ktstr boots: `/init` plus the directories it mounts on
/// and `/dev/console`, which the kernel opens as init's stdio before
/// devtmpfs exists.
pub fn initramfs(init: Vec<u8>) -> Vec<u8> {
    write(&[
        Entry::dir("dev"),
        Entry::char_device("dev/console", 0o600, 5, 1),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::file("init", 0o755, init),
    ])
}

/// `entries` as a newc archive, trailer included.
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        header(&mut out, i as u32 + 1, e);
    }
    header(&mut out, 0, &Entry::new(TRAILER, 0, (0, 0), Vec::new()));
    out
}

fn header(out: &mut Vec<u8>, ino: u32, e: &Entry) {
    let nlink = if e.mode & DIR == DIR { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(MAGIC.as_bytes());
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc reader as the kernel's `init/initramfs.c` reads: header
    /// fields, name padded to 4 from the header's start, data padded to 4.
    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        loop {
            assert_eq!(&buf[..6], MAGIC.as_bytes());
            let field = |i: usize| hex(&buf[6 + 8 * i..14 + 8 * i]);
            let (mode, size, rdev) = (field(1), field(6) as usize, (field(9), field(10)));
            let namesize = field(11) as usize;
            assert_eq!(field(12), 0, "check field");
            let name = &buf[110..110 + namesize];
            assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
            let name = std::str::from_utf8(&name[..namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = buf[data_at..data_at + size].to_vec();
            buf = &buf[(data_at + size).next_multiple_of(4)..];
            if name == TRAILER {
                assert!(buf.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn archive_reads_back_entry_by_entry() {
        let init = b"\x7fELF fake init, 23 bytes".to_vec();
        let archive = initramfs(init.clone());
        assert!(archive.len().is_multiple_of(4));
        let entries = parse(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "proc", "sys", "init"]);
        let console = &entries[1];
        assert_eq!(console.mode, 0o020600);
        assert_eq!(console.rdev, (5, 1));
        let file = &entries[4];
        assert_eq!(file.mode, 0o100755);
        assert_eq!(file.data, init);
        assert_eq!(entries[0].mode, 0o040755);
    }

    #[test]
    fn same_input_same_bytes_and_every_padding() {
        assert_eq!(initramfs(vec![1, 2, 3]), initramfs(vec![1, 2, 3]));
        // Data lengths 0..=4 and names of every length mod 4 read back.
        for len in 0..=4 {
            let entries: Vec<Entry> = ["a", "ab", "abc", "abcd"]
                .iter()
                .map(|n| Entry::file(n, 0o644, vec![7; len]))
                .collect();
            assert_eq!(parse(&write(&entries)), entries);
        }
    }
}
