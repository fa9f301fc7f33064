//! faultline's VMM.
#![deny(missing_docs)]
