//! `VmConfig`: everything a launch needs, validated once.
//!
//! The CLI (`vmm::cli`) only turns arguments into these types; tests and benchmarks build
//! them directly. Each error names the bad value and says how to fix it.

use std::path::PathBuf;

/// Default guest RAM: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Smallest guest RAM accepted: 16 MiB (built-in guests load at 2 MiB and keep their
/// stacks above; a Linux kernel needs far more, which its loader checks).
pub const MIN_MEMORY: u64 = 16 << 20;
/// Default kernel command line for `--kernel` launches (`vmm::boot` appends the platform
/// options of resources/guest-kernel/cmdline.txt). No `noapic`: the MP table describes
/// the in-kernel I/O APIC, and with `noapic` faultline's guest kernel hung in boot here.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// How guest RAM is backed on the host (`--backing`): the one backing type, shared with the
/// model's scenarios and `bench faults` (`mmu::backing`). Guest RAM takes four of its kinds,
/// [`RAM_BACKINGS`]; `hugetlb` here is a shared 2 MiB hugetlb memfd.
pub use mmu::backing::Backing;

/// The backings guest RAM can have, in CLI order.
pub const RAM_BACKINGS: [Backing; 4] = [
    Backing::Anon,
    Backing::Thp,
    Backing::Shmem,
    Backing::Hugetlb,
];

/// Size the guest RAM size must be a multiple of with `backing`.
pub fn ram_alignment(backing: Backing) -> u64 {
    match backing {
        Backing::Hugetlb => 2 << 20,
        _ => 4 << 10,
    }
}

/// A size string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeParseError {
    /// Size {0:?} does not parse: write a number with an optional K, M, G or T suffix (e.g. 256M, 2G)
    #[error("Size {0:?} does not parse: write a number with an optional K, M, G or T suffix (e.g. 256M, 2G)")]
    Invalid(String),
    /// Size {0:?} is too large to represent
    #[error("Size {0:?} is too large to represent in bytes")]
    Overflow(String),
}

/// Parses a byte size: `4096`, `64K`, `256M`, `2G`, `1T` (binary units; an optional
/// trailing `B`/`iB`, any case). A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeParseError> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeParseError::Invalid(s.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeParseError::Overflow(s.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeParseError::Overflow(s.to_string()))
}

/// Formats a byte count with the largest binary unit that divides it (`256M`, `2G`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

/// Guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Host backing of guest RAM.
    pub backing: Backing,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            size: DEFAULT_MEMORY,
            backing: Backing::Anon,
        }
    }
}

/// A Linux kernel launch (`--kernel`), consumed by `vmm::boot::load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// A bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs (`--initrd`).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`--cmdline`, default [`DEFAULT_CMDLINE`]).
    pub cmdline: String,
    /// The command after `--` to run in the guest (empty: none). The boot code builds an
    /// initramfs whose init runs it and reports its exit status when no initrd is given.
    pub init_command: Vec<String>,
    /// How an ELF vmlinux is entered (`--boot-protocol`); a bzImage always takes the
    /// 64-bit boot protocol.
    pub boot_protocol: BootProtocol,
}

/// How faultline enters an ELF vmlinux (`--boot-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// The x86 64-bit boot protocol at the ELF entry (`startup_64`) with a zero page, as a
    /// bzImage is entered, and as Firecracker enters a vmlinux: the zero page can carry
    /// `setup_data`, so the kernel gets an RNG seed (`SETUP_RNG_SEED`).
    #[default]
    Linux,
    /// PVH (the ELF's `XEN_ELFNOTE_PHYS32_ENTRY`, 32-bit flat entry, `hvm_start_info`), as
    /// QEMU microvm enters a vmlinux: no `setup_data`, so no RNG seed.
    Pvh,
}

/// The option's spelling (`--boot-protocol linux`), from clap's value names.
impl std::fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// What the VM runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A built-in guest program, by name (see `vmm::guests`).
    Guest(String),
    /// A Linux kernel.
    Kernel(KernelConfig),
}

/// Environment variable naming the KVM device node (like `--kvm-device`).
pub const KVM_DEVICE_ENV: &str = "FAULTLINE_KVM_DEVICE";
/// The default KVM device node.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// A whole VM launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// What to run.
    pub payload: Payload,
    /// The KVM device node to open.
    pub kvm_device: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory: MemoryConfig::default(),
            vcpus: 1,
            payload: Payload::Guest(crate::guests::DEFAULT_GUEST.to_string()),
            kvm_device: default_kvm_device(),
        }
    }
}

/// `$FAULTLINE_KVM_DEVICE` if set, else `/dev/kvm`.
pub fn default_kvm_device() -> PathBuf {
    std::env::var_os(KVM_DEVICE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_DEVICE))
}

/// A `VmConfig` that cannot be launched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// --memory 0
    #[error(
        "--memory 0: guest RAM cannot be empty; use at least {} (e.g. --memory 256M)",
        format_size(MIN_MEMORY)
    )]
    MemoryZero,
    /// A backing guest RAM cannot have.
    #[error("--backing {0}: guest RAM cannot be backed by {0}; use anon, thp, shmem or hugetlb")]
    RamBacking(Backing),
    /// Memory below the minimum.
    #[error("--memory {}: too small; use at least {} (e.g. --memory 256M)", format_size(*.size), format_size(MIN_MEMORY))]
    MemoryTooSmall {
        /// Requested bytes.
        size: u64,
    },
    /// Memory not a multiple of the backing's page size.
    #[error("--memory {}: not a multiple of {} as the {backing} backing needs; round it (e.g. --memory 256M)", format_size(*.size), format_size(ram_alignment(*backing)))]
    MemoryUnaligned {
        /// Requested bytes.
        size: u64,
        /// Backing.
        backing: Backing,
    },
    /// Memory above host RAM.
    #[error("--memory {}: more than this host's RAM ({} MiB); choose a smaller size", format_size(*.size), *.host >> 20)]
    MemoryAboveHost {
        /// Requested bytes.
        size: u64,
        /// Host RAM in bytes (MemTotal).
        host: u64,
    },
    /// --vcpus 0
    #[error("--vcpus 0: a VM needs at least one vCPU (e.g. --vcpus 1)")]
    VcpusZero,
    /// More vCPUs than APIC ids.
    #[error("--vcpus {0}: above the limit of {max} vCPUs (xAPIC ids); use --vcpus {max} or fewer", max = MAX_VCPUS)]
    VcpusTooMany(u32),
    /// Kernel file missing.
    #[error("Kernel {path:?} not found or unreadable ({reason}); pass a bzImage or vmlinux with --kernel")]
    KernelUnreadable {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Initrd file missing.
    #[error("Initrd {path:?} not found or unreadable ({reason}); pass an initramfs (cpio) with --initrd")]
    InitrdUnreadable {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Unknown built-in guest.
    #[error("Unknown built-in guest {0:?}; `faultline run --list-guests` lists them")]
    UnknownGuest(String),
    /// Initrd/command used without a kernel.
    #[error("{0} needs --kernel: built-in guests take no {0}")]
    NeedsKernel(&'static str),
}

/// Upper bound on vCPUs independent of KVM (xAPIC has 8-bit APIC ids; 255 is broadcast).
pub const MAX_VCPUS: u32 = 254;

/// Host RAM in bytes (MemTotal in /proc/meminfo), if readable.
pub fn host_ram() -> Option<u64> {
    Some(crate::host::sysfs::meminfo("MemTotal")? * 1024)
}

fn check_readable(path: &std::path::Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl VmConfig {
    /// Checks everything that can be checked without KVM. KVM's own limits (e.g.
    /// `KVM_CAP_MAX_VCPUS`) are checked when the VM is created.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let size = self.memory.size;
        if size == 0 {
            return Err(ValidationError::MemoryZero);
        }
        if size < MIN_MEMORY {
            return Err(ValidationError::MemoryTooSmall { size });
        }
        if !RAM_BACKINGS.contains(&self.memory.backing) {
            return Err(ValidationError::RamBacking(self.memory.backing));
        }
        if !size.is_multiple_of(ram_alignment(self.memory.backing)) {
            return Err(ValidationError::MemoryUnaligned {
                size,
                backing: self.memory.backing,
            });
        }
        if let Some(host) = host_ram() {
            if size > host {
                return Err(ValidationError::MemoryAboveHost { size, host });
            }
        }
        if self.vcpus == 0 {
            return Err(ValidationError::VcpusZero);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ValidationError::VcpusTooMany(self.vcpus));
        }
        match &self.payload {
            Payload::Guest(name) => {
                if crate::guests::find(name).is_none() {
                    return Err(ValidationError::UnknownGuest(name.clone()));
                }
            }
            Payload::Kernel(k) => {
                check_readable(&k.kernel).map_err(|reason| ValidationError::KernelUnreadable {
                    path: k.kernel.clone(),
                    reason,
                })?;
                if let Some(initrd) = &k.initrd {
                    check_readable(initrd).map_err(|reason| ValidationError::InitrdUnreadable {
                        path: initrd.clone(),
                        reason,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Parses one `--kernel-rules` name (6.12, 6.13, 6.18; `KernelVersion`'s `FromStr`), with
/// the fix in the error.
pub fn parse_rules(s: &str) -> Result<mmu::types::KernelVersion, String> {
    s.trim()
        .parse::<mmu::types::KernelVersion>()
        .map_err(|_| format!("unknown rule set {:?}: use 6.12, 6.13 or 6.18", s.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_protocols_print_as_the_option_spells_them() {
        use clap::ValueEnum;
        for p in BootProtocol::value_variants() {
            assert_eq!(BootProtocol::from_str(&p.to_string(), false), Ok(*p));
        }
        assert_eq!(BootProtocol::Linux.to_string(), "linux");
    }
    #[test]
    fn parse_size_accepts_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn parse_size_rejects_garbage() {
        for bad in ["", "M", "abc", "12X", "-1M", "1.5G", "G2"] {
            assert!(
                matches!(parse_size(bad), Err(SizeParseError::Invalid(_))),
                "{bad:?} should not parse"
            );
        }
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeParseError::Overflow(_))
        ));
    }

    #[test]
    fn format_size_picks_largest_unit() {
        assert_eq!(format_size(256 << 20), "256M");
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn validate_rejects_bad_values_with_their_value() {
        let mut c = VmConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.memory.size = 0;
        assert_eq!(c.validate(), Err(ValidationError::MemoryZero));
        c.memory.size = 1 << 20;
        assert!(c.validate().unwrap_err().to_string().contains("1M"));
        c.memory.size = (256 << 20) + 5;
        assert!(matches!(
            c.validate(),
            Err(ValidationError::MemoryUnaligned { .. })
        ));
        c.memory.size = 1 << 50;
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ValidationError::MemoryAboveHost { .. }), "{e}");
        c.memory.size = 64 << 20;
        c.memory.backing = Backing::Hugetlb;
        assert_eq!(c.validate(), Ok(()));
        c.memory.size = (64 << 20) + 4096;
        assert!(c.validate().unwrap_err().to_string().contains("hugetlb"));
        c.memory.size = 64 << 20;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ValidationError::VcpusZero));
        c.vcpus = 100_000;
        assert!(c.validate().unwrap_err().to_string().contains("100000"));
        c.vcpus = 1;
        c.payload = Payload::Guest("nope".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--list-guests"));
        c.payload = Payload::Kernel(KernelConfig {
            kernel: "/nonexistent/bzImage".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            init_command: vec![],
            boot_protocol: BootProtocol::default(),
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/bzImage") && e.contains("--kernel"),
            "{e}"
        );
    }

    #[test]
    fn backing_parses_cli_names() {
        for b in RAM_BACKINGS {
            assert_eq!(b.name().parse::<Backing>(), Ok(b));
        }
        // The KVM selftests' names for the same memory.
        assert_eq!("anonymous_thp".parse::<Backing>(), Ok(Backing::Thp));
        let c = VmConfig {
            memory: MemoryConfig {
                backing: Backing::File,
                ..Default::default()
            },
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("file") && e.contains("anon, thp, shmem or hugetlb"),
            "{e}"
        );
        assert!("huge"
            .parse::<Backing>()
            .unwrap_err()
            .to_string()
            .contains("anon, thp"));
    }
}
