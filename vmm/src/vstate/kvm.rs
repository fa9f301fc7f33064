//! Opening the KVM device node.

use kvm_ioctls::Kvm;
use std::path::{Path, PathBuf};

/// KVM's stable API version (`KVM_GET_API_VERSION`).
const KVM_API_VERSION: i32 = 12;

/// The KVM device node could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmOpenError {
    /// The node does not exist.
    #[error(
        "KVM device {path:?} does not exist. Load the KVM module (`sudo modprobe kvm_intel` or \
         `kvm_amd`; check that virtualization is enabled), or point --kvm-device / \
         FAULTLINE_KVM_DEVICE at the right node"
    )]
    Missing {
        /// The path tried.
        path: PathBuf,
    },
    /// No permission to open it.
    #[error(
        "No permission to open KVM device {path:?} ({source}). Add yourself to its group: \
         `sudo usermod -aG kvm $USER` then log in again (or `sudo chmod 666 {}`)",
        path.display()
    )]
    Permission {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Opening failed otherwise.
    #[error("Cannot open KVM device {path:?}: {source}")]
    Open {
        /// The path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The node is not KVM.
    #[error("{path:?} is not a KVM device (KVM_GET_API_VERSION: {detail}); point --kvm-device at /dev/kvm")]
    NotKvm {
        /// The path tried.
        path: PathBuf,
        /// What the version check said.
        detail: String,
    },
}

/// Opens `path` as KVM and checks its API version.
pub fn open_kvm(path: &Path) -> Result<Kvm, KvmOpenError> {
    let p = path.to_path_buf();
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| KvmOpenError::Missing { path: p.clone() })?;
    let kvm = Kvm::new_with_path(cpath.as_c_str()).map_err(|e| {
        let source = std::io::Error::from_raw_os_error(e.errno());
        match e.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmOpenError::Missing { path: p.clone() },
            libc::EACCES | libc::EPERM => KvmOpenError::Permission {
                path: p.clone(),
                source,
            },
            _ => KvmOpenError::Open {
                path: p.clone(),
                source,
            },
        }
    })?;
    let v = kvm.get_api_version();
    if v != KVM_API_VERSION {
        let detail = if v < 0 {
            std::io::Error::last_os_error().to_string()
        } else {
            format!("version {v}, expected {KVM_API_VERSION}")
        };
        return Err(KvmOpenError::NotKvm { path: p, detail });
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_node_says_how_to_fix() {
        let e = open_kvm(Path::new("/nonexistent/kvm"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/kvm") && e.contains("modprobe"),
            "{e}"
        );
    }

    #[test]
    fn a_non_kvm_node_is_rejected() {
        let e = open_kvm(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("not a KVM device"), "{e}");
    }
}
