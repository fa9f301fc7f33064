//! CPUID: KVM's supported set, adjusted per vCPU.

use super::VcpuSetupError;
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// CPUID for vCPU `index`: KVM's supported set with this vCPU's APIC id (leaf 1 EBX[31:24],
/// leaves 0xb/0x1f EDX, AMD leaf 0x8000001e EAX), the hypervisor bit, and the logical
/// processor count.
pub fn vcpu_cpuid(supported: &CpuId, index: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                e.ecx |= 1 << 31; // hypervisor present
                e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
            }
            // x2APIC id in the extended topology leaves (Intel) ...
            0xb | 0x1f => e.edx = index,
            // ... and the extended APIC id (AMD), which Linux checks against the APIC.
            0x8000_001e => e.eax = index,
            _ => {}
        }
    }
    cpuid
}

/// KVM_GET_SUPPORTED_CPUID.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuSetupError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuSetupError::SupportedCpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_carries_each_vcpus_apic_id() {
        let mut supported = CpuId::new(2).unwrap();
        supported.as_mut_slice()[0].function = 1;
        supported.as_mut_slice()[0].ebx = 0xff00_0800;
        supported.as_mut_slice()[1].function = 0xb;
        let c = vcpu_cpuid(&supported, 3, 4);
        assert_eq!(c.as_slice()[0].ebx >> 24, 3);
        assert_eq!((c.as_slice()[0].ebx >> 16) & 0xff, 4);
        assert_eq!(c.as_slice()[0].ebx & 0xffff, 0x0800);
        assert_eq!(c.as_slice()[1].edx, 3);
    }
}
