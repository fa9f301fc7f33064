//! `faultline check`: one scenario on the model and on real KVM, compared observable by observable.

pub mod space;
pub mod report;
pub mod compare;
pub mod exec;
pub mod cli;
