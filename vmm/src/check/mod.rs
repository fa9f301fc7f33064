//! `faultline check`: the scenario checker (model vs real KVM).
pub mod observe;
