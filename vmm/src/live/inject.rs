//! Host events injected into a running guest (`--inject`, `--schedule`): what they are, when
//! they fire, and how they parse.
//!
//! `--inject 'KIND[:GPA+LEN][@every=DUR|@at=DUR][,count=N]'`, for example
//! `dontneed:0x800000+16M@every=50ms`, `fork@at=200ms`, `dirty-log-on@at=0ms`. A schedule
//! file is TOML with one `[[event]]` table per event:
//!
//! ```toml
//! [[event]]
//! kind = "dontneed"
//! gpa = "0x800000"
//! size = "16M"
//! every = "50ms"
//! count = 10
//! ```

use serde::Deserialize;
use std::time::Duration;

/// Every event kind, as `--inject` and schedule files name them.
pub const KNOWN_EVENTS: &[&str] = &[
    "dontneed",
    "thp-collapse",
    "aging",
    "fork",
    "dirty-log-on",
    "dirty-log-off",
    "numa-scan",
];

/// What an injected event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `madvise(MADV_DONTNEED)` over the range (real and model).
    Dontneed,
    /// `madvise(MADV_COLLAPSE)` over the range (real and model).
    ThpCollapse,
    /// An aging pass (`clear_flush_young` over the range): model only, this host has no
    /// page_idle interface wired.
    Aging,
    /// `fork()` of the VMM (real and model); the child exits right after.
    Fork,
    /// `KVM_MEM_LOG_DIRTY_PAGES` on for every guest-RAM memslot (real and model).
    DirtyLogOn,
    /// `KVM_MEM_LOG_DIRTY_PAGES` off again.
    DirtyLogOff,
    /// A NUMA-balancing scan over the range: model only (one NUMA node here).
    NumaScan,
}

impl EventKind {
    /// Parses a kind name.
    pub fn from_name(name: &str) -> Result<Self, InjectError> {
        Ok(match name {
            "dontneed" => Self::Dontneed,
            "thp-collapse" => Self::ThpCollapse,
            "aging" => Self::Aging,
            "fork" => Self::Fork,
            "dirty-log-on" => Self::DirtyLogOn,
            "dirty-log-off" => Self::DirtyLogOff,
            "numa-scan" => Self::NumaScan,
            other => return Err(InjectError::UnknownEvent(other.to_string())),
        })
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dontneed => "dontneed",
            Self::ThpCollapse => "thp-collapse",
            Self::Aging => "aging",
            Self::Fork => "fork",
            Self::DirtyLogOn => "dirty-log-on",
            Self::DirtyLogOff => "dirty-log-off",
            Self::NumaScan => "numa-scan",
        }
    }

    /// Whether the event needs a guest-physical range.
    pub fn needs_range(self) -> bool {
        matches!(
            self,
            Self::Dontneed | Self::ThpCollapse | Self::Aging | Self::NumaScan
        )
    }

    /// Why the event is applied to the model alone on this host, if it is.
    pub fn model_only(self) -> Option<&'static str> {
        match self {
            Self::Aging => Some("model only: aging through page_idle/MGLRU is not wired here"),
            Self::NumaScan => Some("model only: NUMA hinting needs 2 nodes, this host has one"),
            _ => None,
        }
    }
}

/// When an event fires, from the start of the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Once, at this time.
    At(Duration),
    /// Every period, first after one period.
    Every(Duration),
}

/// One injected event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// What.
    pub kind: EventKind,
    /// Guest-physical range `(gpa, len)` for the kinds that take one.
    pub range: Option<(u64, u64)>,
    /// When.
    pub when: When,
    /// At most this many times (`None`: until the guest ends; `At` fires once).
    pub count: Option<u32>,
}

/// A bad `--inject` spec or schedule file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// An event kind nobody knows.
    #[error("unknown event {0:?}: use one of {known}", known = KNOWN_EVENTS.join(", "))]
    UnknownEvent(String),
    /// The spec does not have the `KIND[:GPA+LEN]@every=DUR|@at=DUR` shape.
    #[error("bad --inject {spec:?}: {why}; write it as KIND[:GPA+LEN]@every=DUR or @at=DUR, e.g. dontneed:0x800000+16M@every=50ms")]
    Spec {
        /// The spec.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A schedule file does not parse.
    #[error("schedule {file}: {why}")]
    Schedule {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
}

/// Parses `50ms`, `1s`, `200us`, `3m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 50ms, 1s, 200us)"))?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use us, ms, s or m")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_num(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| format!("{s:?} is not a hex number"));
    }
    crate::config::parse_size(s).map_err(|e| e.to_string())
}

fn check(inj: Injection) -> Result<Injection, String> {
    match (inj.kind.needs_range(), inj.range) {
        (true, None) => Err(format!(
            "{} needs a guest-physical range (GPA+LEN)",
            inj.kind.name()
        )),
        (false, Some(_)) => Err(format!("{} takes no range", inj.kind.name())),
        (_, Some((gpa, len))) if gpa % 4096 != 0 || len % 4096 != 0 || len == 0 => Err(format!(
            "range {gpa:#x}+{len:#x} must be 4K-aligned and non-empty"
        )),
        (_, _) => match inj.when {
            When::Every(p) if p.is_zero() => {
                Err("a period of 0 would never let the guest run".into())
            }
            _ => Ok(inj),
        },
    }
}

impl Injection {
    /// Parses one `--inject` spec.
    pub fn parse(spec: &str) -> Result<Injection, InjectError> {
        let bad = |why: String| InjectError::Spec {
            spec: spec.to_string(),
            why,
        };
        let (what, when) = spec
            .split_once('@')
            .ok_or_else(|| bad("no @every=DUR or @at=DUR".into()))?;
        let (kind, range) = match what.split_once(':') {
            Some((k, r)) => (k, Some(r)),
            None => (what, None),
        };
        let kind = EventKind::from_name(kind.trim())?;
        let range = match range {
            Some(r) => {
                let (g, l) = r
                    .split_once('+')
                    .ok_or_else(|| bad(format!("range {r:?} is not GPA+LEN")))?;
                Some((parse_num(g).map_err(bad)?, parse_num(l).map_err(bad)?))
            }
            None => None,
        };
        let mut parts = when.split(',');
        let first = parts.next().unwrap_or("");
        let when = match first.split_once('=') {
            Some(("every", d)) => When::Every(parse_duration(d).map_err(bad)?),
            Some(("at", d)) => When::At(parse_duration(d).map_err(bad)?),
            _ => return Err(bad(format!("{first:?}: use every=DUR or at=DUR"))),
        };
        let mut count = None;
        for p in parts {
            match p.split_once('=') {
                Some(("count", n)) => {
                    count = Some(
                        n.parse()
                            .map_err(|_| bad(format!("count {n:?} is not a number")))?,
                    )
                }
                _ => {
                    return Err(bad(format!(
                        "{p:?}: the only option after the time is count=N"
                    )))
                }
            }
        }
        check(Injection {
            kind,
            range,
            when,
            count,
        })
        .map_err(bad)
    }

    /// Parses a schedule file's text; `file` names it in errors.
    pub fn parse_schedule(file: &str, text: &str) -> Result<Vec<Injection>, InjectError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(default)]
            event: Vec<RawEvent>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawEvent {
            kind: String,
            #[serde(default)]
            gpa: Option<toml::Value>,
            #[serde(default)]
            size: Option<toml::Value>,
            #[serde(default)]
            every: Option<String>,
            #[serde(default)]
            at: Option<String>,
            #[serde(default)]
            count: Option<u32>,
        }
        let bad = |why: String| InjectError::Schedule {
            file: file.to_string(),
            why,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        let num = |v: &toml::Value| match v {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{i} is negative")),
            toml::Value::String(s) => parse_num(s),
            other => Err(format!("{other} is not a number")),
        };
        let mut out = Vec::new();
        for (i, e) in raw.event.iter().enumerate() {
            let at = |why: String| bad(format!("event {i} ({}): {why}", e.kind));
            let kind = match EventKind::from_name(&e.kind) {
                Ok(k) => k,
                Err(err) => return Err(bad(format!("event {i}: {err}"))),
            };
            let range = match (&e.gpa, &e.size) {
                (Some(g), Some(s)) => Some((num(g).map_err(at)?, num(s).map_err(at)?)),
                (None, None) => None,
                _ => return Err(at("give both gpa and size, or neither".into())),
            };
            let when = match (&e.every, &e.at) {
                (Some(p), None) => When::Every(parse_duration(p).map_err(at)?),
                (None, Some(t)) => When::At(parse_duration(t).map_err(at)?),
                _ => {
                    return Err(at(
                        "give exactly one of every = \"DUR\" or at = \"DUR\"".into()
                    ))
                }
            };
            out.push(
                check(Injection {
                    kind,
                    range,
                    when,
                    count: e.count,
                })
                .map_err(at)?,
            );
        }
        Ok(out)
    }
}

/// The firing times of a set of injections.
#[derive(Debug)]
pub struct Timer {
    next: Vec<Option<Duration>>,
    fired: Vec<u32>,
}

impl Timer {
    /// Starts the clock for `events`.
    pub fn new(events: &[Injection]) -> Self {
        Timer {
            next: events
                .iter()
                .map(|e| match e.when {
                    When::At(t) => Some(t),
                    When::Every(p) => Some(p),
                })
                .collect(),
            fired: vec![0; events.len()],
        }
    }

    /// The earliest time an event is due, if any is left.
    pub fn next_due(&self) -> Option<Duration> {
        self.next.iter().flatten().min().copied()
    }

    /// The events due at `now` (indices), advancing their clocks.
    pub fn due(&mut self, events: &[Injection], now: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(t) = self.next[i] else { continue };
            if t > now {
                continue;
            }
            out.push(i);
            self.fired[i] += 1;
            let done = e.count.is_some_and(|c| self.fired[i] >= c);
            self.next[i] = match e.when {
                When::Every(p) if !done => Some(now + p),
                _ => None,
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let i = Injection::parse("dontneed:0x800000+16M@every=50ms").unwrap();
        assert_eq!(i.kind, EventKind::Dontneed);
        assert_eq!(i.range, Some((0x80_0000, 16 << 20)));
        assert_eq!(i.when, When::Every(Duration::from_millis(50)));
        let i = Injection::parse("fork@at=1s,count=1").unwrap();
        assert_eq!((i.kind, i.range, i.count), (EventKind::Fork, None, Some(1)));
        assert_eq!(i.when, When::At(Duration::from_secs(1)));
        assert!(EventKind::NumaScan.model_only().is_some());
        assert!(EventKind::Dontneed.model_only().is_none());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let e = Injection::parse("frobnicate@every=1s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frobnicate") && e.contains("thp-collapse"),
            "{e}"
        );
        let e = Injection::parse("dontneed@every=1s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a guest-physical range"), "{e}");
        let e = Injection::parse("dontneed:0x1000+4K")
            .unwrap_err()
            .to_string();
        assert!(e.contains("@every"), "{e}");
        let e = Injection::parse("dontneed:0x1001+4K@at=1s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("4K-aligned"), "{e}");
        let e = Injection::parse("fork@every=0ms").unwrap_err().to_string();
        assert!(e.contains("period of 0"), "{e}");
        let e = Injection::parse("fork@at=soon").unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn schedules_parse_and_unknown_events_are_named() {
        let s = Injection::parse_schedule(
            "s.toml",
            "[[event]]\nkind = \"dontneed\"\ngpa = \"0x800000\"\nsize = \"2M\"\nevery = \"20ms\"\ncount = 3\n\
             [[event]]\nkind = \"numa-scan\"\ngpa = 0\nsize = 4096\nat = \"5ms\"\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].count, Some(3));
        let e =
            Injection::parse_schedule("s.toml", "[[event]]\nkind = \"ksm-merge\"\nat = \"1s\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("s.toml") && e.contains("ksm-merge") && e.contains("dontneed, thp-collapse"),
            "{e}"
        );
        let e = Injection::parse_schedule("s.toml", "[[event]]\nkind = \"fork\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exactly one of every"), "{e}");
        let e = Injection::parse_schedule(
            "s.toml",
            "[[event]]\nkind = \"fork\"\nat = \"1s\"\nwhen = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("when"), "{e}");
    }

    #[test]
    fn the_timer_fires_periods_and_counts() {
        let ev = vec![
            Injection::parse("fork@every=10ms,count=2").unwrap(),
            Injection::parse("dirty-log-on@at=15ms").unwrap(),
        ];
        let mut t = Timer::new(&ev);
        assert_eq!(t.next_due(), Some(Duration::from_millis(10)));
        assert!(t.due(&ev, Duration::from_millis(5)).is_empty());
        assert_eq!(t.due(&ev, Duration::from_millis(10)), vec![0]);
        assert_eq!(t.due(&ev, Duration::from_millis(20)), vec![0, 1]);
        assert_eq!(t.next_due(), None);
        assert!(t.due(&ev, Duration::from_secs(1)).is_empty());
    }
}
