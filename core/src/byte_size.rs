//! Byte counts as people write and read them: `--max-size 20G` in, `1.4G`
//! out, and how much disk a cache entry takes.
//!
//! Units are binary (K = 1024), as in `du -h`, `ls -h` and `sort -h`, so
//! what `kernel list` shows can be passed back to `kernel clean --max-size`.
//! Hand-written: the crates that do this pick decimal or binary by suffix
//! spelling, which is the ambiguity this module exists to settle.

use std::path::Path;

const UNITS: [char; 5] = ['K', 'M', 'G', 'T', 'P'];

/// Parse `500M`, `20G`, `1.5T`, `4096` (bytes), `64K`, `2GiB`, `2GB`
/// (every suffix binary). The error says what was wrong and what works.
pub fn parse(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let bad = |why: &str| {
        format!(
            "{raw:?} is not a size: {why}; write a number with an optional unit, like 500M or 20G"
        )
    };
    let value: f64 = number
        .parse()
        .map_err(|_| bad("it does not start with a number"))?;
    let suffix = suffix.trim();
    let unit = suffix
        .strip_suffix("iB")
        .or_else(|| suffix.strip_suffix('B'))
        .unwrap_or(suffix);
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1u64,
        u => match UNITS.iter().position(|c| u.len() == 1 && u.starts_with(*c)) {
            Some(i) => 1u64 << (10 * (i + 1)),
            None => return Err(bad(&format!("unknown unit {suffix:?} (K, M, G, T or P)"))),
        },
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("it is too large"));
    }
    Ok(bytes as u64)
}

/// `812`, `4.0K`, `61M`, `1.4G`: at most three significant digits.
pub fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64;
    let mut unit = 'B';
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if value < 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// Disk space the files under `dir` take (allocated blocks, as `du`
/// counts them: what removing them frees). Symlinks are not followed;
/// unreadable parts count as nothing.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0);
    own + children
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("500M"), Ok(500 << 20));
        assert_eq!(parse("20G"), Ok(20 << 30));
        assert_eq!(parse("20g"), Ok(20 << 30));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("2GB"), Ok(2 << 30));
        assert_eq!(parse("1.5K"), Ok(1536));
        assert_eq!(parse(" 1T "), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_say_why_and_how() {
        for (raw, why) in [
            ("", "does not start with a number"),
            ("G", "does not start with a number"),
            ("20X", "unknown unit \"X\""),
            ("20 gigs", "unknown unit"),
            ("1.2.3G", "does not start with a number"),
            ("99999999999P", "too large"),
        ] {
            let e = parse(raw).unwrap_err();
            assert!(
                e.contains(why) && e.contains("like 500M or 20G"),
                "{raw}: {e}"
            );
        }
    }

    #[test]
    fn human_units_round_trip_through_parse() {
        assert_eq!(human(812), "812B");
        assert_eq!(human(4096), "4.0K");
        assert_eq!(human(61 << 20), "61M");
        assert_eq!(human(1_503_238_553), "1.4G");
        for bytes in [4096u64, 61 << 20, 3 << 30] {
            assert_eq!(parse(&human(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn disk_usage_counts_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![1u8; 5_000]).unwrap();
        let used = disk_usage(dir.path());
        assert!(used >= 15_000, "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
