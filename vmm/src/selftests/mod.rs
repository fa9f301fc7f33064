//! `faultline test mm`: the kernel's MM selftests in a faultline guest, with a verdict.
pub mod ktap;
