//! SMP: with 2 and 4 vCPUs, every vCPU runs guest code and reports its own index.
//!
//! The `smp` guest checks on each vCPU that CPUID's APIC id equals the index the VMM gave
//! it, prints, and makes a ucall sync(index); the host knows which vCPU made each ucall
//! from the exit itself, so a vCPU cannot report for another. Needs /dev/kvm.

use faultline_tests::guest::{faultline, kvm_available, run_guest, Ucall, UcallRecord};

fn every_vcpu_reports_its_id(n: u32) {
    let run = run_guest("smp", n);
    for i in 0..n {
        let rec = UcallRecord {
            vcpu: i as usize,
            call: Ucall::Sync(u64::from(i)),
        };
        assert!(
            run.outcome.ucalls.contains(&rec),
            "vCPU {i} did not sync: {:?}",
            run.outcome.ucalls
        );
        assert!(
            run.console
                .contains(&format!("vCPU {i} of {n} running guest code")),
            "{}",
            run.console
        );
    }
    let syncs = run
        .outcome
        .ucalls
        .iter()
        .filter(|r| matches!(r.call, Ucall::Sync(_)))
        .count();
    assert_eq!(syncs, n as usize);
    assert!(run.console.contains(&format!("all {n} vCPUs reported")));
}

#[test]
fn two_vcpus_each_run_guest_code() {
    if kvm_available("two_vcpus_each_run_guest_code") {
        every_vcpu_reports_its_id(2);
    }
}

#[test]
fn four_vcpus_each_run_guest_code() {
    if kvm_available("four_vcpus_each_run_guest_code") {
        every_vcpu_reports_its_id(4);
    }
}

#[test]
fn smp_through_the_binary_exits_0_with_every_vcpu_printing() {
    if !kvm_available("smp_through_the_binary_exits_0_with_every_vcpu_printing") {
        return;
    }
    let out = faultline(&["run", "--guest", "smp", "--vcpus", "4"]);
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    for i in 0..4 {
        assert!(
            out.stdout
                .contains(&format!("vCPU {i} of 4 running guest code")),
            "{}",
            out.stdout
        );
    }
}
