//! Guest devices for the faultline VMM.
#![deny(missing_docs)]
