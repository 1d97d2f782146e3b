//! Tables on stdout fitted to the terminal: `kernel list` and `locks`.
//!
//! A row that wraps in an 80-column terminal is unreadable, so a table is
//! fitted to the real width (`COLUMNS` when set, else the terminal's):
//! long columns are shortened first (the key in its middle, so its
//! version prefix and digest suffix stay visible), then the least useful
//! columns are dropped. Off a terminal, and with `--wide`, nothing is cut,
//! so a pipe gets every full key.

use std::io::IsTerminal;

/// A column and how far it can be shortened.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    /// Shortened down to this many characters at most.
    pub min: usize,
    /// Shorten in the middle (`abc…xyz`) rather than at the end.
    pub middle: bool,
}

/// One step of making a too-wide table fit, by column index; steps are
/// taken in order until the table fits.
#[derive(Debug, Clone, Copy)]
pub enum GiveWay {
    /// Shorten the column down to its `min`.
    Shorten(usize),
    /// Leave the column out.
    Drop(usize),
}

/// The width to fit: `None` (unlimited) for `--wide` or when stdout is not
/// a terminal and `COLUMNS` is unset.
pub fn width(wide: bool) -> Option<usize> {
    if wide {
        return None;
    }
    if let Some(cols) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
    {
        return Some(cols);
    }
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0))
}

/// The fitted lines, and whether any cell was shortened or column dropped.
pub fn render(
    columns: &[Column],
    give_way: &[GiveWay],
    rows: &[Vec<String>],
    width: Option<usize>,
) -> (Vec<String>, bool) {
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<Option<usize>> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| len(&r[i])).chain([len(c.header)]).max())
        .collect();
    let total = |w: &[Option<usize>]| {
        let shown: Vec<usize> = w.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + shown.len().saturating_sub(1)
    };
    let mut cut = false;
    if let Some(limit) = width {
        for step in give_way {
            let over = total(&widths).saturating_sub(limit);
            if over == 0 {
                break;
            }
            match *step {
                GiveWay::Shorten(i) => {
                    if let Some(w) = widths[i] {
                        let new = w.saturating_sub(over).max(columns[i].min.min(w));
                        cut |= new < w;
                        widths[i] = Some(new);
                    }
                }
                GiveWay::Drop(i) => {
                    cut |= widths[i].is_some();
                    widths[i] = None;
                }
            }
        }
    }
    let last = widths.iter().rposition(Option::is_some);
    let hard_cut = std::cell::Cell::new(false);
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            let Some(w) = *w else { continue };
            if !out.is_empty() {
                out.push(' ');
            }
            let text = shorten(cell, w, columns[i].middle);
            if Some(i) == last {
                out.push_str(&text);
            } else {
                out.push_str(&format!("{text:<w$}"));
            }
        }
        let out = out.trim_end().to_string();
        // Last resort when even the unshortenable columns do not fit.
        match width {
            Some(limit) if len(&out) > limit => {
                hard_cut.set(true);
                out.chars().take(limit).collect()
            }
            _ => out,
        }
    };
    let mut lines = vec![line(columns.iter().map(|c| c.header).collect())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    let cut = cut || hard_cut.get();
    (lines, cut)
}

/// `text` in at most `w` characters, `…` marking what was left out.
pub fn shorten(text: &str, w: usize, middle: bool) -> String {
    let n = text.chars().count();
    if n <= w {
        return text.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let keep = w - 1;
    let chars: Vec<char> = text.chars().collect();
    if middle {
        let tail = keep / 2;
        let head = keep - tail;
        let mut out: String = chars[..head].iter().collect();
        out.push('…');
        out.extend(&chars[n - tail..]);
        out
    } else {
        let mut out: String = chars[..keep].iter().collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: [Column; 3] = [
        Column {
            header: "KEY",
            min: 12,
            middle: true,
        },
        Column {
            header: "WHEN",
            min: 0,
            middle: false,
        },
        Column {
            header: "SOURCE",
            min: 8,
            middle: false,
        },
    ];
    const GIVE_WAY: [GiveWay; 4] = [
        GiveWay::Shorten(2),
        GiveWay::Drop(2),
        GiveWay::Shorten(0),
        GiveWay::Drop(1),
    ];

    fn rows() -> Vec<Vec<String>> {
        vec![vec![
            "6.12.0-tarball-x86_64-0123456789abcdef".into(),
            "2026-12-06 02:24".into(),
            "tarball https://cdn.kernel.org/pub/linux-6.12.tar.xz".into(),
        ]]
    }

    #[test]
    fn a_table_that_fits_exactly_is_not_cut() {
        let (lines, _) = render(&COLS, &GIVE_WAY, &rows(), None);
        let exact = lines.iter().map(|l| l.chars().count()).max().unwrap();
        let (fitted, cut) = render(&COLS, &GIVE_WAY, &rows(), Some(exact));
        assert!(!cut);
        assert_eq!(fitted, lines);
        let (_, cut) = render(&COLS, &GIVE_WAY, &rows(), Some(5));
        assert!(cut, "cut to the bare width");
    }

    #[test]
    fn unlimited_keeps_everything() {
        let (lines, cut) = render(&COLS, &GIVE_WAY, &rows(), None);
        assert!(!cut);
        assert!(lines[1].starts_with("6.12.0-tarball-x86_64-0123456789abcdef 2026"));
        assert!(lines[1].ends_with("linux-6.12.tar.xz"));
    }

    #[test]
    fn narrow_shortens_then_drops_and_never_overflows() {
        for w in [10, 20, 30, 40, 60, 80, 100, 120] {
            let (lines, _) = render(&COLS, &GIVE_WAY, &rows(), Some(w));
            for l in &lines {
                assert!(l.chars().count() <= w, "{w}: {l:?}");
            }
        }
        let (lines, cut) = render(&COLS, &GIVE_WAY, &rows(), Some(70));
        assert!(cut);
        assert!(
            lines[1].starts_with("6.12.0-tarball-x86_64-0123456789abcdef 2026-12-06 02:24 tarball"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with('…'), "source shortened first: {lines:?}");
        let (lines, _) = render(&COLS, &GIVE_WAY, &rows(), Some(60));
        assert_eq!(
            lines[0], "KEY                                    WHEN",
            "source dropped"
        );
        let (lines, _) = render(&COLS, &GIVE_WAY, &rows(), Some(30));
        assert_eq!(
            lines[1], "6.12.0…abcdef 2026-12-06 02:24",
            "then the key shortened in its middle: {lines:?}"
        );
    }

    #[test]
    fn shorten_keeps_both_ends_in_the_middle_mode() {
        assert_eq!(shorten("abcdefghij", 5, true), "ab…ij");
        assert_eq!(shorten("abcdefghij", 5, false), "abcd…");
        assert_eq!(shorten("abc", 5, true), "abc");
    }
}
