//! `faultline check`: run a scenario on the model and on real KVM, compare observables.
pub mod agent;
