//! Reading the guest's serial console: the init's `ktstr-verify:` lines,
//! kernel panics, and the verdict they add up to.
//!
//! The init's protocol (see `init.c`): `ktstr-verify: start`, then one
//! `ktstr-verify: key=value` line per fact (`release`, `sched_ext`, `btf`,
//! `cpus`, `uptime`; `error=...` when a step failed), then
//! `ktstr-verify: done`. A marker is found anywhere in a line, since a
//! kernel message can be printed in front of it on the same line.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ktstr_sdk::verify::{Verdict, observed};

/// The init's line prefix.
pub const MARKER: &str = "ktstr-verify: ";
const PANIC: &str = "Kernel panic - not syncing: ";
/// Console lines kept for a failed verdict.
pub const TAIL_LINES: usize = 20;

/// How the qemu run ended, as far as the console cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// qemu exited on its own (the guest rebooted or powered off).
    Exited,
    /// The bound passed and qemu was killed.
    TimedOut(Duration),
}

/// What the console showed so far.
#[derive(Debug, Default)]
pub struct Transcript {
    tail: VecDeque<String>,
    facts: BTreeMap<String, String>,
    errors: Vec<String>,
    started: bool,
    done: bool,
    panic: Option<String>,
    guest_lines: usize,
}

impl Transcript {
    /// Take one line of qemu's output. `from_qemu` marks qemu's own
    /// messages (`qemu-system-x86_64: warning: ...`): kept in the tail, but
    /// not guest output.
    pub fn feed(&mut self, raw: &str, from_qemu: bool) {
        let line = clean(raw);
        if line.is_empty() {
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if from_qemu {
            return;
        }
        self.guest_lines += 1;
        if let Some(at) = line.find(MARKER) {
            let report = &line[at + MARKER.len()..];
            match report.split_once('=') {
                Some(("error", why)) => self.errors.push(why.to_string()),
                Some((key, value)) => {
                    self.facts.insert(key.to_string(), value.to_string());
                }
                None if report == "start" => self.started = true,
                None if report == "done" => self.done = true,
                None => {}
            }
        } else if self.panic.is_none()
            && let Some(at) = line.find(PANIC)
        {
            let why = line[at + PANIC.len()..].trim_end_matches(" ]---").trim();
            self.panic = Some(why.to_string());
        }
    }

    /// The init reported `done`.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Lines that came from the guest (not from qemu itself).
    pub fn guest_lines(&self) -> usize {
        self.guest_lines
    }

    /// The verdict. `label` names the accelerator (`TCG`), `booted_in`
    /// is the time from qemu's start to `done`, `vcpus` what the guest was
    /// given, `release` the `uname -r` the build recorded, when known.
    pub fn verdict(
        &self,
        ending: Ending,
        label: &str,
        booted_in: Option<Duration>,
        vcpus: usize,
        release: Option<&str>,
    ) -> Verdict {
        let mut observed = self.facts.clone();
        observed.insert("accel".into(), label.to_ascii_lowercase());
        let failed = |summary: String| Verdict {
            passed: false,
            summary,
            observed: observed.clone(),
            console_tail: self.tail.iter().cloned().collect(),
        };
        if self.done {
            if let Some(error) = self.errors.first() {
                return failed(format!("init: {error}"));
            }
            if let Some(unmet) = self
                .wrong_release(release)
                .or_else(|| self.missing_feature())
            {
                return failed(unmet);
            }
            return Verdict {
                passed: true,
                summary: self.boot_summary(label, booted_in, vcpus),
                observed,
                console_tail: Vec::new(),
            };
        }
        if let Some(panic) = &self.panic {
            return failed(format!("kernel panic: {panic}"));
        }
        let last = match self.tail.back() {
            Some(line) => format!("last console line: {line}"),
            None => "no console output".to_string(),
        };
        match ending {
            Ending::TimedOut(after) => {
                failed(format!("timed out after {}: {last}", seconds(after, 0)))
            }
            Ending::Exited if self.started => {
                failed(format!("init stopped before reporting done: {last}"))
            }
            Ending::Exited if self.guest_lines == 0 => failed(format!(
                "init never ran: the guest printed nothing on its console \
                 (serial console driver missing from the kernel?); {last}"
            )),
            Ending::Exited => failed(format!("init never ran: the guest reset; {last}")),
        }
    }

    /// The image booted another kernel than the entry was built as.
    fn wrong_release(&self, expected: Option<&str>) -> Option<String> {
        let expected = expected.filter(|r| !r.is_empty())?;
        let seen = self.facts.get(observed::RELEASE)?;
        (seen != expected)
            .then(|| format!("booted release {seen}, but the entry was built as {expected}"))
    }

    /// sched_ext and BTF are what ktstr's kernels are for; the build
    /// validated their config symbols, this checks the running kernel.
    fn missing_feature(&self) -> Option<String> {
        let fact = |key: &str| self.facts.get(key).map(String::as_str);
        match fact(observed::SCHED_EXT) {
            None | Some("absent") => {
                return Some(
                    "sched_ext absent: /sys/kernel/sched_ext/state does not exist \
                     (CONFIG_SCHED_CLASS_EXT)"
                        .into(),
                );
            }
            Some(_) => {}
        }
        match fact(observed::BTF) {
            Some("present") => None,
            _ => Some(
                "BTF absent: /sys/kernel/btf/vmlinux does not exist (CONFIG_DEBUG_INFO_BTF)".into(),
            ),
        }
    }

    fn boot_summary(&self, label: &str, booted_in: Option<Duration>, vcpus: usize) -> String {
        let fact = |key: &str| self.facts.get(key).map(String::as_str).unwrap_or("?");
        let cpus = match self.facts.get(observed::CPUS) {
            Some(n) if n.parse::<usize>().ok() == Some(vcpus) => format!("{n} CPUs"),
            Some(n) => format!("{n} of {vcpus} CPUs online"),
            None => "CPUs unknown".into(),
        };
        let time = booted_in
            .map(|d| format!(" in {}", seconds(d, 1)))
            .unwrap_or_default();
        format!(
            "booted {}{time} ({label}): sched_ext {}, BTF {}, {cpus}",
            fact(observed::RELEASE),
            fact(observed::SCHED_EXT),
            fact(observed::BTF),
        )
    }
}

fn seconds(d: Duration, decimals: usize) -> String {
    format!("{:.*} s", decimals, d.as_secs_f64())
}

/// `raw` without terminal escapes (firmware clears the screen) and control
/// characters.
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; otherwise ESC plus one char.
            if chars.next_if_eq(&'[').is_some() {
                for p in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&p) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(transcript: &str) -> Transcript {
        let mut t = Transcript::default();
        for line in transcript.lines() {
            t.feed(line, line.starts_with("qemu-system-"));
        }
        t
    }

    const BOOT: &str = "\u{1b}c\u{1b}[?7l\u{1b}[2JLinux version 6.12.118 (root@vm) #1 SMP
Run /init as init process
ktstr-verify: start
ktstr-verify: release=6.12.118
ktstr-verify: sched_ext=disabled
ktstr-verify: btf=present
ktstr-verify: cpus=2
[    0.812] random: crng init done ktstr-verify: uptime=0.77
ktstr-verify: done
reboot: Restarting system";

    #[test]
    fn a_full_report_passes_with_what_init_saw() {
        let t = feed(BOOT);
        let v = t.verdict(
            Ending::Exited,
            "TCG",
            Some(Duration::from_millis(2345)),
            2,
            None,
        );
        assert!(v.passed, "{v:?}");
        assert_eq!(
            v.summary,
            "booted 6.12.118 in 2.3 s (TCG): sched_ext disabled, BTF present, 2 CPUs"
        );
        assert_eq!(v.observed["release"], "6.12.118");
        assert_eq!(v.observed["sched_ext"], "disabled");
        assert_eq!(v.observed["btf"], "present");
        assert_eq!(v.observed["cpus"], "2");
        assert_eq!(
            v.observed["uptime"], "0.77",
            "marker after a kernel message"
        );
        assert_eq!(v.observed["accel"], "tcg");
        assert!(v.console_tail.is_empty());
        let fewer = t.verdict(Ending::Exited, "KVM", None, 4, None);
        assert!(fewer.summary.ends_with("2 of 4 CPUs online"), "{fewer:?}");
    }

    #[test]
    fn a_release_other_than_the_entrys_fails() {
        let t = feed(BOOT);
        let v = t.verdict(Ending::Exited, "TCG", None, 2, Some("6.12.118"));
        assert!(v.passed, "{v:?}");
        let v = t.verdict(Ending::Exited, "TCG", None, 2, Some("6.13.0"));
        assert!(!v.passed);
        assert_eq!(
            v.summary,
            "booted release 6.12.118, but the entry was built as 6.13.0"
        );
    }

    #[test]
    fn done_then_killed_still_passes() {
        // The init reported done but the guest never went away: qemu was
        // killed by the bound; what the init saw stands.
        let v = feed(BOOT).verdict(
            Ending::TimedOut(Duration::from_secs(5)),
            "TCG",
            None,
            2,
            None,
        );
        assert!(v.passed, "{v:?}");
    }

    #[test]
    fn a_panic_names_its_line_and_keeps_the_tail() {
        let transcript = "Linux version 6.12.118
Freeing unused kernel image (initmem) memory: 704K
Run /nonexistent as init process
Failed to execute /nonexistent (error -2)
Kernel panic - not syncing: No working init found.  Try passing init= option to kernel. See Linux Documentation/admin-guide/init.rst for guidance.
CPU: 0 UID: 0 PID: 1 Comm: swapper Not tainted 6.12.118 #1
---[ end Kernel panic - not syncing: something else ]---
reboot: Restarting system";
        let v = feed(transcript).verdict(Ending::Exited, "TCG", None, 2, None);
        assert!(!v.passed);
        assert_eq!(
            v.summary,
            "kernel panic: No working init found.  Try passing init= option to kernel. \
             See Linux Documentation/admin-guide/init.rst for guidance."
        );
        assert_eq!(v.console_tail.len(), 8);
        assert_eq!(v.console_tail[0], "Linux version 6.12.118");
        assert_eq!(v.console_tail[7], "reboot: Restarting system");
    }

    #[test]
    fn the_trailer_alone_names_the_panic() {
        let v =
            feed("[ 1.0] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---")
                .verdict(Ending::Exited, "TCG", None, 1, None);
        assert_eq!(v.summary, "kernel panic: VFS: Unable to mount root fs");
    }

    #[test]
    fn truncated_output_times_out_with_the_last_line() {
        let mut many = String::new();
        for i in 0..50 {
            many.push_str(&format!("line {i}\n"));
        }
        many.push_str("ktstr-verify: start\nktstr-verify: release=6.1");
        let v = feed(&many).verdict(
            Ending::TimedOut(Duration::from_secs(120)),
            "TCG",
            None,
            1,
            None,
        );
        assert!(!v.passed);
        assert_eq!(
            v.summary,
            "timed out after 120 s: last console line: ktstr-verify: release=6.1"
        );
        assert_eq!(v.console_tail.len(), TAIL_LINES);
        assert_eq!(v.console_tail[0], "line 32");

        let v = feed("").verdict(
            Ending::TimedOut(Duration::from_millis(1500)),
            "KVM",
            None,
            1,
            None,
        );
        assert_eq!(v.summary, "timed out after 2 s: no console output");
    }

    #[test]
    fn never_reaching_init_and_stopping_early_are_told_apart() {
        let v = feed("qemu-system-x86_64: warning: host doesn't support pni").verdict(
            Ending::Exited,
            "TCG",
            None,
            1,
            None,
        );
        assert!(
            v.summary
                .starts_with("init never ran: the guest printed nothing"),
            "{v:?}"
        );
        assert_eq!(v.console_tail.len(), 1, "qemu's own line stays in the tail");

        let v = feed("Linux version 6.12\nreboot: machine restart").verdict(
            Ending::Exited,
            "TCG",
            None,
            1,
            None,
        );
        assert_eq!(
            v.summary,
            "init never ran: the guest reset; last console line: reboot: machine restart"
        );

        let v = feed("ktstr-verify: start\nktstr-verify: release=6.12").verdict(
            Ending::Exited,
            "TCG",
            None,
            1,
            None,
        );
        assert_eq!(
            v.summary,
            "init stopped before reporting done: last console line: ktstr-verify: release=6.12"
        );
    }

    #[test]
    fn missing_features_and_init_errors_fail() {
        let no_scx = BOOT.replace("sched_ext=disabled", "sched_ext=absent");
        let v = feed(&no_scx).verdict(Ending::Exited, "TCG", None, 2, None);
        assert!(!v.passed);
        assert!(v.summary.starts_with("sched_ext absent"), "{v:?}");
        assert!(!v.console_tail.is_empty());

        let no_btf = BOOT.replace("btf=present", "btf=absent");
        let v = feed(&no_btf).verdict(Ending::Exited, "TCG", None, 2, None);
        assert!(v.summary.starts_with("BTF absent"), "{v:?}");

        let err = BOOT.replace(
            "ktstr-verify: done",
            "ktstr-verify: error=mount /sys: No such device\nktstr-verify: done",
        );
        let v = feed(&err).verdict(Ending::Exited, "TCG", None, 2, None);
        assert_eq!(v.summary, "init: mount /sys: No such device");
    }

    #[test]
    fn escapes_and_carriage_returns_are_dropped() {
        assert_eq!(clean("\u{1b}c\u{1b}[?7l\u{1b}[2JLinux\r"), "Linux");
        assert_eq!(clean("a\u{1b}[0;31mred\u{1b}[0m\u{7}"), "ared");
        assert_eq!(clean("\r\n"), "");
    }
}
