//! Where the live service's time goes: per-phase timers summed over a run
//! (`faultline bench faults --live --profile`, or `FAULTLINE_LIVE_PROFILE=1` for
//! `faultline run --live`).
//!
//! The service thread takes a timestamp at each phase boundary and adds the time since the
//! previous one to that phase, so the phases add up to the service thread's wall time
//! (one clock read, ~40 ns here, per boundary; off unless asked for).

use serde::Serialize;
use std::time::Instant;

/// Environment variable that turns the profile on for `faultline run --live`.
pub const PROFILE_ENV: &str = "FAULTLINE_LIVE_PROFILE";

/// One phase of the service loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting: reads of the uffd that found nothing, `poll()`, `sched_yield()`.
    Wait,
    /// Reads of the uffd that returned events.
    Read,
    /// The event's checks (region, stale WP) and the step built from it.
    Prepare,
    /// The model's step (`ScenarioRunner::push`).
    Model,
    /// The decision from the model's host page (`host_page`, the store, the action).
    Decide,
    /// The uffd ioctls that apply it (the guest waits until they end).
    Ioctl,
    /// Counters of the summary (results, levels, GUP paths, size mismatches).
    Account,
    /// The real page checked against the model (pagemap, kpageflags).
    Verify,
    /// The recording: the record built, serialised and handed to the writer.
    Record,
    /// Injected host events (with their tracefs comparison).
    Inject,
    /// The rest of the loop: the VM's stop flag, the injection timers.
    Loop,
    /// Waiting for the lock on the model (held by another resolver or an injected event).
    Lock,
}

/// Summed time per phase (nanoseconds), and how many faults they served.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Phases {
    /// Faults resolved through the model while profiling.
    pub faults: u64,
    /// [`Phase::Wait`].
    pub wait_ns: u64,
    /// [`Phase::Read`].
    pub read_ns: u64,
    /// [`Phase::Prepare`].
    pub prepare_ns: u64,
    /// [`Phase::Model`].
    pub model_ns: u64,
    /// [`Phase::Decide`].
    pub decide_ns: u64,
    /// [`Phase::Ioctl`].
    pub ioctl_ns: u64,
    /// [`Phase::Account`].
    pub account_ns: u64,
    /// [`Phase::Verify`].
    pub verify_ns: u64,
    /// [`Phase::Record`].
    pub record_ns: u64,
    /// [`Phase::Inject`].
    pub inject_ns: u64,
    /// [`Phase::Loop`].
    pub loop_ns: u64,
    /// [`Phase::Lock`].
    pub lock_ns: u64,
}

impl Phases {
    fn slot(&mut self, p: Phase) -> &mut u64 {
        match p {
            Phase::Wait => &mut self.wait_ns,
            Phase::Read => &mut self.read_ns,
            Phase::Prepare => &mut self.prepare_ns,
            Phase::Model => &mut self.model_ns,
            Phase::Decide => &mut self.decide_ns,
            Phase::Ioctl => &mut self.ioctl_ns,
            Phase::Account => &mut self.account_ns,
            Phase::Verify => &mut self.verify_ns,
            Phase::Record => &mut self.record_ns,
            Phase::Inject => &mut self.inject_ns,
            Phase::Loop => &mut self.loop_ns,
            Phase::Lock => &mut self.lock_ns,
        }
    }

    /// The phases in loop order, with their names.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("wait", self.wait_ns),
            ("read", self.read_ns),
            ("prepare", self.prepare_ns),
            ("model", self.model_ns),
            ("decide", self.decide_ns),
            ("ioctl", self.ioctl_ns),
            ("account", self.account_ns),
            ("verify", self.verify_ns),
            ("record", self.record_ns),
            ("inject", self.inject_ns),
            ("loop", self.loop_ns),
            ("lock", self.lock_ns),
        ]
    }

    /// Adds `other`'s time and faults (another resolver's) to these.
    pub fn add(&mut self, other: &Phases) {
        self.faults += other.faults;
        let mut o = other.clone();
        for p in [
            Phase::Wait,
            Phase::Read,
            Phase::Prepare,
            Phase::Model,
            Phase::Decide,
            Phase::Ioctl,
            Phase::Account,
            Phase::Verify,
            Phase::Record,
            Phase::Inject,
            Phase::Loop,
            Phase::Lock,
        ] {
            *self.slot(p) += *o.slot(p);
        }
    }

    /// One line: nanoseconds per fault of each phase, and the critical path (what the guest
    /// waits for: prepare, model, decide, ioctl).
    pub fn render(&self) -> String {
        let Some(n) = (self.faults > 0).then_some(self.faults) else {
            return "  phases: no fault served while profiling\n".into();
        };
        let parts: Vec<String> = self
            .named()
            .iter()
            .map(|(name, ns)| format!("{name} {}", ns / n))
            .collect();
        let critical = (self.prepare_ns + self.model_ns + self.decide_ns + self.ioctl_ns) / n;
        format!(
            "  phases (ns per fault, {n} faults): {}; critical path (prepare+model+decide+ioctl) {critical}\n",
            parts.join(", ")
        )
    }
}

/// The phase timer of the service thread: disabled, it reads no clock.
#[derive(Debug)]
pub struct Profiler {
    last: Option<Instant>,
    /// What was measured so far.
    pub phases: Phases,
}

impl Profiler {
    /// A profiler that measures when `on`.
    pub fn new(on: bool) -> Self {
        Profiler {
            last: on.then(Instant::now),
            phases: Phases::default(),
        }
    }

    /// Whether it measures.
    pub fn on(&self) -> bool {
        self.last.is_some()
    }

    /// Ends the current phase as `p`: the time since the previous boundary goes to `p`.
    #[inline]
    pub fn lap(&mut self, p: Phase) {
        if let Some(last) = self.last.as_mut() {
            let now = Instant::now();
            let ns = u64::try_from(now.duration_since(*last).as_nanos()).unwrap_or(u64::MAX);
            *self.phases.slot(p) += ns;
            *last = now;
        }
    }

    /// Counts one served fault.
    #[inline]
    pub fn fault(&mut self) {
        if self.on() {
            self.phases.faults += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_to_their_phase_and_an_off_profiler_measures_nothing() {
        let mut p = Profiler::new(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        p.lap(Phase::Model);
        p.lap(Phase::Ioctl);
        p.fault();
        assert!(p.phases.model_ns >= 2_000_000, "{:?}", p.phases);
        assert!(p.phases.ioctl_ns < p.phases.model_ns);
        assert_eq!(p.phases.faults, 1);
        let t = p.phases.render();
        assert!(t.contains("1 faults") && t.contains("model "), "{t}");
        let mut off = Profiler::new(false);
        std::thread::sleep(std::time::Duration::from_millis(1));
        off.lap(Phase::Model);
        off.fault();
        assert_eq!(off.phases, Phases::default());
        assert!(off.phases.render().contains("no fault"));
    }
}
