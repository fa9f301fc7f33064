//! Unit tests of the Linux loader over plain guest memory (no KVM): zero page, PVH start
//! info, e820 map, initrd placement and command-line limits, on small hand-made kernel
//! images (a minimal bzImage header and minimal ELF files with and without a PVH note).
//! Booting real kernels is tests/tests/linux.rs.

use super::*;
use std::io::Write;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn mem(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn tmpfile(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-boot-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn cfg(kernel: &Path) -> KernelConfig {
    KernelConfig {
        kernel: kernel.to_path_buf(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=-1".into(),
        init_command: vec![],
        boot_protocol: BootProtocol::Linux,
    }
}

fn cfg_pvh(kernel: &Path) -> KernelConfig {
    KernelConfig {
        boot_protocol: BootProtocol::Pvh,
        ..cfg(kernel)
    }
}

/// A minimal bzImage: one setup sector after the boot sector, a 64-bit capable header and
/// `payload` as the protected-mode kernel.
fn fake_bzimage(xloadflags: u16, payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    img[0x260..0x264].copy_from_slice(&(8 * MIB as u32).to_le_bytes()); // init_size
    img.extend_from_slice(payload);
    img
}

/// A minimal ELF64 x86-64 executable: one PT_LOAD of `code` at 16 MiB (its entry) and,
/// with `pvh_entry`, a PT_NOTE holding XEN_ELFNOTE_PHYS32_ENTRY.
fn fake_elf(pvh_entry: Option<u32>, code: &[u8]) -> Vec<u8> {
    const LOAD_ADDR: u64 = 0x100_0000;
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let note_off = 64 + 56 * u64::from(phnum);
    // Elf64_Nhdr: namesz, descsz, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", desc.
    let mut note = Vec::new();
    if let Some(e) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&e.to_le_bytes());
    }
    let code_off = (note_off + note.len() as u64).next_multiple_of(16);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let phdr = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes()); // p_flags RWX
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // p_paddr
        f.extend_from_slice(&size.to_le_bytes()); // p_filesz
        f.extend_from_slice(&size.to_le_bytes()); // p_memsz
        f.extend_from_slice(&16u64.to_le_bytes()); // p_align
    };
    phdr(&mut f, 1, code_off, LOAD_ADDR, code.len() as u64); // PT_LOAD
    if pvh_entry.is_some() {
        phdr(&mut f, 4, note_off, 0, note.len() as u64); // PT_NOTE
    }
    f.extend_from_slice(&note);
    f.resize(code_off as usize, 0);
    f.extend_from_slice(code);
    f
}

fn read_zero_page(m: &GuestMemoryMmap) -> boot_params {
    m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
}

fn read_cstr(m: &GuestMemoryMmap, addr: u64) -> String {
    let mut buf = vec![0u8; CMDLINE_MAX_SIZE];
    m.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    let end = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(buf[..end].to_vec()).unwrap()
}

#[test]
fn e820_map_reserves_the_legacy_hole_with_the_mp_table_in_it() {
    let m = mem(256 * MIB);
    assert_eq!(
        e820_map(&m).unwrap(),
        vec![
            (0, EBDA_START, E820_RAM),
            (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
            (HIMEM_START, 256 * MIB - HIMEM_START, E820_RAM),
        ]
    );
}

#[test]
fn e820_map_follows_a_memory_hole() {
    let m = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), (64 * MIB) as usize),
        (GuestAddress(128 * MIB), (32 * MIB) as usize),
    ])
    .unwrap();
    let map = e820_map(&m).unwrap();
    assert_eq!(map.len(), 4);
    assert_eq!(map[2], (HIMEM_START, 63 * MIB, E820_RAM));
    assert_eq!(map[3], (128 * MIB, 32 * MIB, E820_RAM));
}

#[test]
fn bzimage_enters_at_64bit_entry_with_zero_page_describing_everything() {
    let m = mem(256 * MIB);
    let k = tmpfile("bz", &fake_bzimage(XLF_KERNEL_64, &[0x90; 4096]));
    let initrd = tmpfile("bz-initrd", &[0xab; 10_000]);
    let mut c = cfg(&k);
    c.initrd = Some(initrd);
    let loaded = load_kernel(&m, &c, 2).unwrap();
    assert_eq!(loaded.format, KernelFormat::BzImage);
    assert_eq!(
        loaded.entry,
        EntryPoint::Long64 {
            rip: 0x10_0200,
            rsi: ZERO_PAGE_START
        }
    );
    // The protected-mode kernel landed at code32_start.
    let mut first = [0u8; 4];
    m.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(first, [0x90; 4]);

    let zp = read_zero_page(&m);
    let hdr = zp.hdr;
    assert_eq!({ hdr.header }, HDRS_MAGIC);
    assert_eq!({ hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    let (addr, size) = loaded.initrd.unwrap();
    assert_eq!(
        ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
        (addr as u32, 10_000)
    );
    // Highest page-aligned spot, and clear of the decompression area (16 MiB + 8 MiB).
    assert_eq!(addr % 4096, 0);
    assert!(addr + size <= 256 * MIB && addr + size > 256 * MIB - 8192);
    assert!(addr >= 24 * MIB);
    let mut ird = vec![0u8; 10_000];
    m.read_slice(&mut ird, GuestAddress(addr)).unwrap();
    assert!(ird.iter().all(|&b| b == 0xab));
    assert_eq!(zp.e820_entries, 3);
    let e0 = zp.e820_table[2];
    assert_eq!(
        ({ e0.addr }, { e0.size }, { e0.r#type }),
        (HIMEM_START, 255 * MIB, E820_RAM)
    );

    let cl = read_cstr(&m, CMDLINE_START);
    assert_eq!(cl, loaded.cmdline);
    assert!(cl.starts_with("console=ttyS0 reboot=k panic=-1 "), "{cl}");
    assert!(
        cl.contains("pvm_syscall_fixup") && cl.contains("noxsave"),
        "{cl}"
    );
    assert_eq!(cl.matches("console=").count(), 1, "{cl}");

    // The MP table is there for 2 CPUs.
    let mut sig = [0u8; 4];
    m.read_slice(&mut sig, GuestAddress(mptable::MPTABLE_START))
        .unwrap();
    assert_eq!(&sig, b"_MP_");
}

#[test]
fn bzimage_without_64bit_entry_is_refused() {
    let m = mem(64 * MIB);
    let k = tmpfile("bz32", &fake_bzimage(0, &[0x90; 512]));
    let e = load_kernel(&m, &cfg(&k), 1).unwrap_err();
    assert!(matches!(e, BootError::Not64Bit { .. }), "{e}");
    assert!(e.to_string().contains("bz32"), "{e}");
}

#[test]
fn elf_with_pvh_note_enters_pvh_with_start_info_memmap_and_initrd_module() {
    let m = mem(128 * MIB);
    let k = tmpfile("pvh", &fake_elf(Some(0x100_0040), &[0xf4; 256]));
    let initrd = tmpfile("pvh-initrd", b"0707010000");
    let mut c = cfg_pvh(&k);
    c.initrd = Some(initrd);
    let loaded = load_kernel(&m, &c, 1).unwrap();
    assert_eq!(loaded.format, KernelFormat::ElfPvh);
    assert_eq!(
        loaded.entry,
        EntryPoint::Pvh32 {
            rip: 0x100_0040,
            rbx: PVH_INFO_START
        }
    );
    let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.memmap_entries, 3);
    assert_eq!(info.nr_modules, 1);
    let map: hvm_memmap_table_entry = m
        .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
        .unwrap();
    assert_eq!(
        (map.addr, map.size, map.type_),
        (HIMEM_START, 127 * MIB, E820_RAM)
    );
    let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(Some((module.paddr, module.size)), loaded.initrd);
    assert_eq!(module.size, 10);
    assert!(module.paddr >= loaded.kernel_end);
    assert!(read_cstr(&m, CMDLINE_START).contains("pvm_syscall_fixup"));
}

#[test]
fn boot_protocol_pvh_without_a_pvh_entry_names_the_image_and_the_fix() {
    for (name, img) in [
        ("nopvh-elf", fake_elf(None, &[0xf4; 256])),
        ("nopvh-bz", fake_bzimage(XLF_KERNEL_64, &[0x90; 4096])),
    ] {
        let e = load_kernel(&mem(64 * MIB), &cfg_pvh(&tmpfile(name, &img)), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("no PVH entry") && e.contains("--boot-protocol linux"),
            "{e}"
        );
    }
}

#[test]
fn elf_enters_long_mode_with_a_synthesised_zero_page_by_default_pvh_note_or_not() {
    for (name, pvh) in [("elf64", None), ("elf64-pvh-note", Some(0x100_0040))] {
        elf_enters_long_mode_with_a_synthesised_zero_page(name, pvh);
    }
}

fn elf_enters_long_mode_with_a_synthesised_zero_page(name: &str, pvh: Option<u32>) {
    let m = mem(64 * MIB);
    let k = tmpfile(name, &fake_elf(pvh, &[0xf4; 256]));
    let loaded = load_kernel(&m, &cfg(&k), 1).unwrap();
    assert_eq!(loaded.format, KernelFormat::Elf64);
    assert_eq!(
        loaded.entry,
        EntryPoint::Long64 {
            rip: 0x100_0000,
            rsi: ZERO_PAGE_START
        }
    );
    let zp = read_zero_page(&m);
    let hdr = zp.hdr;
    assert_eq!(
        ({ hdr.boot_flag }, { hdr.header }),
        (BOOT_FLAG_MAGIC, HDRS_MAGIC)
    );
    assert_eq!({ hdr.ramdisk_image }, 0);
    assert_eq!(zp.e820_entries, 3);
    assert_eq!(loaded.initrd, None);
}

/// The `SETUP_RNG_SEED` entry a zero-page boot hands the kernel: (next, type, len, seed).
fn read_rng_seed(m: &GuestMemoryMmap) -> (u64, u32, u32, [u8; RNG_SEED_LEN]) {
    let next: u64 = m.read_obj(GuestAddress(SETUP_DATA_START)).unwrap();
    let kind: u32 = m.read_obj(GuestAddress(SETUP_DATA_START + 8)).unwrap();
    let len: u32 = m.read_obj(GuestAddress(SETUP_DATA_START + 12)).unwrap();
    let mut seed = [0u8; RNG_SEED_LEN];
    m.read_slice(&mut seed, GuestAddress(SETUP_DATA_START + 16))
        .unwrap();
    (next, kind, len, seed)
}

#[test]
fn zero_page_boots_hand_the_kernel_a_fresh_rng_seed_and_pvh_boots_none() {
    let bz = tmpfile("seed-bz", &fake_bzimage(XLF_KERNEL_64, &[0x90; 4096]));
    let elf = tmpfile("seed-elf64", &fake_elf(None, &[0xf4; 256]));
    let mut seeds = Vec::new();
    for k in [&bz, &elf, &bz] {
        let m = mem(64 * MIB);
        load_kernel(&m, &cfg(k), 1).unwrap();
        assert_eq!({ read_zero_page(&m).hdr.setup_data }, SETUP_DATA_START);
        let (next, kind, len, seed) = read_rng_seed(&m);
        assert_eq!((next, kind, len), (0, 9, RNG_SEED_LEN as u32), "{k:?}");
        // The seed sits between the zero page and the page tables, in e820 RAM.
        assert!(SETUP_DATA_START >= ZERO_PAGE_START + 4096);
        assert!(SETUP_DATA_START + 16 + RNG_SEED_LEN as u64 <= crate::vstate::entry::PML4_START);
        seeds.push(seed);
    }
    // Fresh per boot: 256 random bits never repeat.
    assert_ne!(seeds[0], seeds[1]);
    assert_ne!(seeds[0], seeds[2]);
    // A boot protocol older than 2.09 has no setup_data: none is written.
    let mut old = fake_bzimage(XLF_KERNEL_64, &[0x90; 4096]);
    old[0x206..0x208].copy_from_slice(&0x0208u16.to_le_bytes());
    let m = mem(64 * MIB);
    load_kernel(&m, &cfg(&tmpfile("seed-old", &old)), 1).unwrap();
    assert_eq!({ read_zero_page(&m).hdr.setup_data }, 0);
    assert_eq!(read_rng_seed(&m), (0, 0, 0, [0; RNG_SEED_LEN]));
    // PVH's hvm_start_info has no setup_data (init_pvh_bootparams() reads none).
    let m = mem(64 * MIB);
    let pvh = tmpfile("seed-pvh", &fake_elf(Some(0x100_0000), &[0xf4; 256]));
    load_kernel(&m, &cfg_pvh(&pvh), 1).unwrap();
    assert_eq!(read_rng_seed(&m), (0, 0, 0, [0; RNG_SEED_LEN]));
}

#[test]
fn missing_kernel_is_named() {
    let m = mem(64 * MIB);
    let e = load_kernel(&m, &cfg(Path::new("/nonexistent/vmlinuz")), 1).unwrap_err();
    assert!(matches!(e, BootError::KernelUnreadable { .. }));
    assert!(e.to_string().contains("/nonexistent/vmlinuz"), "{e}");
}

#[test]
fn a_file_that_is_not_a_kernel_is_named_as_such() {
    let m = mem(64 * MIB);
    let k = tmpfile("notes.txt", &b"just some text, not a kernel\n".repeat(100));
    let e = load_kernel(&m, &cfg(&k), 1).unwrap_err();
    assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("neither a bzImage nor an ELF vmlinux"),
        "{msg}"
    );
    // Too short even for a header.
    let k = tmpfile("tiny", b"MZ");
    let e = load_kernel(&m, &cfg(&k), 1).unwrap_err();
    assert!(matches!(e, BootError::NotAKernel { .. }), "{e}");
}

#[test]
fn missing_initrd_is_named() {
    let m = mem(64 * MIB);
    let k = tmpfile("elf-for-initrd", &fake_elf(Some(0x100_0000), &[0xf4; 16]));
    let mut c = cfg(&k);
    c.initrd = Some("/nonexistent/initrd.cpio".into());
    let e = load_kernel(&m, &c, 1).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/initrd.cpio"), "{e}");
}

#[test]
fn initrd_larger_than_memory_names_sizes_and_suggests_memory() {
    let m = mem(32 * MIB);
    let k = tmpfile("elf-big-initrd", &fake_elf(Some(0x100_0000), &[0xf4; 16]));
    let initrd = tmpfile("big-initrd", &vec![0u8; (40 * MIB) as usize]);
    let mut c = cfg(&k);
    c.initrd = Some(initrd);
    let e = load_kernel(&m, &c, 1).unwrap_err();
    let BootError::InitrdTooLarge {
        size, free, memory, ..
    } = e
    else {
        panic!("{e}");
    };
    assert_eq!((size, memory), (40 * MIB, 32 * MIB));
    assert!(free < 32 * MIB - 16 * MIB, "free {free}");
    let msg = e.to_string();
    assert!(
        msg.contains("big-initrd") && msg.contains("--memory"),
        "{msg}"
    );
    assert!(msg.contains("40960 KiB"), "{msg}");
}

#[test]
fn kernel_larger_than_memory_suggests_memory() {
    let m = mem(16 * MIB);
    // init_size of 8 MiB above pref_address 16 MiB does not fit in 16 MiB.
    let k = tmpfile("bz-big", &fake_bzimage(XLF_KERNEL_64, &[0x90; 4096]));
    let e = load_kernel(&m, &cfg(&k), 1).unwrap_err();
    assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("--memory"), "{e}");
}

#[test]
fn command_line_longer_than_the_kernel_accepts_is_refused() {
    let m = mem(64 * MIB);
    let k = tmpfile("bz-cmdline", &fake_bzimage(XLF_KERNEL_64, &[0x90; 512]));
    let mut c = cfg(&k);
    c.cmdline = format!("console=ttyS0 {}", "x".repeat(3000));
    let e = load_kernel(&m, &c, 1).unwrap_err();
    let BootError::CmdlineTooLong { len, max } = e else {
        panic!("{e}");
    };
    assert_eq!(max, 2047);
    assert!(len > 3000);
    assert!(e.to_string().contains("--cmdline"));
    c.cmdline = "console=ttyS0 caf\u{e9}".into();
    let e = load_kernel(&m, &c, 1).unwrap_err();
    assert!(matches!(e, BootError::CmdlineInvalid { .. }), "{e}");
}

#[test]
fn platform_options_are_added_once_unless_the_user_set_them() {
    let full = full_cmdline("console=ttyS1 noxsave");
    assert!(full.starts_with("console=ttyS1 noxsave "));
    assert_eq!(full.matches("console=").count(), 1);
    assert_eq!(full.matches("noxsave").count(), 1);
    assert!(full.contains("clearcpuid=") && full.contains("pvm_syscall_fixup"));
    // Without it the guest kernel's periodic tick livelocks here (README, Known problems).
    assert_eq!(full.matches("pvm_tick_skip_missed").count(), 1);
    assert!(!full.contains('\n'));
}

#[test]
fn place_initrd_goes_high_and_page_aligned_below_the_limit() {
    let m = mem(64 * MIB);
    let a = place_initrd(&m, 5000, 2 * MIB, u64::MAX).unwrap();
    assert_eq!(a, 64 * MIB - 8192);
    let a = place_initrd(&m, 4096, 2 * MIB, 32 * MIB - 1).unwrap();
    assert_eq!(a, 32 * MIB - 4096);
    assert_eq!(place_initrd(&m, 63 * MIB, 2 * MIB, u64::MAX), Err(62 * MIB));
}

#[test]
fn command_is_appended_to_a_given_initrd_as_a_second_archive() {
    let m = mem(64 * MIB);
    let k = tmpfile("elf-cmd", &fake_elf(Some(0x100_0000), &[0xf4; 16]));
    let initrd = tmpfile("odd-initrd", b"abcdefg");
    let mut c = cfg(&k);
    c.initrd = Some(initrd);
    c.init_command = vec!["echo".into(), "hi there".into()];
    let loaded = load_kernel(&m, &c, 1).unwrap();
    let (addr, size) = loaded.initrd.unwrap();
    let mut buf = vec![0u8; size as usize];
    m.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    assert_eq!(&buf[..7], b"abcdefg");
    assert_eq!(
        &buf[8..14],
        b"070701",
        "second archive starts 4-byte aligned"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("'echo' 'hi there'"), "{text}");
    assert!(
        loaded.cmdline.ends_with(" faultline.exit_port=0xf4"),
        "{}",
        loaded.cmdline
    );
}

/// Fuzz targets for the boot code, run as property tests: kernel images (bzImage, ELF with
/// and without a PVH note) mutated field by field from a valid header, raw bytes, initrds
/// of any size and command lines of any bytes, all through [`load_kernel`]. Run many with
/// `PROPTEST_CASES=100000 cargo test --profile fuzz -p vmm --lib fuzz_`.
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Guest RAM of the fuzzed VM: small, so "too large" is reachable.
    const RAM: u64 = 32 * MIB;

    /// Header fields a bzImage mutation targets: (offset, width in bytes).
    const BZ_FIELDS: &[(usize, usize)] = &[
        (0x1f1, 1), // setup_sects
        (0x1fe, 2), // boot_flag
        (0x202, 4), // header
        (0x206, 2), // version
        (0x211, 1), // loadflags
        (0x214, 4), // code32_start
        (0x218, 4), // ramdisk_image
        (0x21c, 4), // ramdisk_size
        (0x22c, 4), // initrd_addr_max
        (0x230, 4), // kernel_alignment
        (0x234, 1), // relocatable_kernel
        (0x236, 2), // xloadflags
        (0x238, 4), // cmdline_size
        (0x248, 4), // payload_offset
        (0x24c, 4), // payload_length
        (0x258, 8), // pref_address
        (0x260, 4), // init_size
        (0x264, 4), // handover_offset
    ];

    /// ELF fields: the header, both program headers and the PVH note.
    const ELF_FIELDS: &[(usize, usize)] = &[
        (0x10, 2),    // e_type
        (0x12, 2),    // e_machine
        (0x18, 8),    // e_entry
        (0x20, 8),    // e_phoff
        (0x28, 8),    // e_shoff
        (0x36, 2),    // e_phentsize
        (0x38, 2),    // e_phnum
        (64, 4),      // p_type
        (64 + 8, 8),  // p_offset
        (64 + 16, 8), // p_vaddr
        (64 + 24, 8), // p_paddr
        (64 + 32, 8), // p_filesz
        (64 + 40, 8), // p_memsz
        (64 + 48, 8), // p_align
        (120, 4),
        (120 + 8, 8),
        (120 + 32, 8),
        (176, 4), // note namesz
        (180, 4), // note descsz
        (184, 4), // note type
        (192, 4), // note desc: the PVH entry
    ];

    /// Values that hit edges: 0, all ones, around RAM's end and 4 GiB, random.
    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u64::from(u32::MAX)),
            (RAM - 0x1000)..(RAM + 0x1000),
            0..0x20_0000u64,
            (u64::MAX - 0x1000)..=u64::MAX,
            any::<u64>(),
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        /// Sets one known header field to a value.
        Field(usize, u64),
        /// Overwrites one byte anywhere.
        Byte(usize, u8),
        /// Cuts the file at this length.
        Truncate(usize),
    }

    fn mutations(fields: &'static [(usize, usize)]) -> impl Strategy<Value = Vec<Mutation>> {
        let m = prop_oneof![
            6 => (0..fields.len(), value()).prop_map(|(i, v)| Mutation::Field(i, v)),
            2 => (any::<usize>(), any::<u8>()).prop_map(|(o, b)| Mutation::Byte(o, b)),
            1 => (0..2048usize).prop_map(Mutation::Truncate),
        ];
        prop::collection::vec(m, 0..6)
    }

    fn apply(img: &mut Vec<u8>, fields: &[(usize, usize)], muts: &[Mutation]) {
        for m in muts {
            match *m {
                Mutation::Field(i, v) => {
                    let (off, width) = fields[i];
                    if off + width <= img.len() {
                        img[off..off + width].copy_from_slice(&v.to_le_bytes()[..width]);
                    }
                }
                Mutation::Byte(o, b) => {
                    if !img.is_empty() {
                        let o = o % img.len();
                        img[o] = b;
                    }
                }
                Mutation::Truncate(n) => img.truncate(n),
            }
        }
    }

    /// An image to load: one of the three valid kinds, mutated, or raw bytes.
    fn image() -> impl Strategy<Value = Vec<u8>> {
        let payload = prop::collection::vec(any::<u8>(), 0..600);
        prop_oneof![
            3 => (any::<u16>(), payload.clone(), mutations(BZ_FIELDS)).prop_map(|(x, p, m)| {
                let mut img = fake_bzimage(x | XLF_KERNEL_64, &p);
                apply(&mut img, BZ_FIELDS, &m);
                img
            }),
            3 => (any::<bool>(), any::<u32>(), payload.clone(), mutations(ELF_FIELDS)).prop_map(
                |(pvh, entry, p, m)| {
                    let mut img = fake_elf(pvh.then_some(entry), &p);
                    apply(&mut img, ELF_FIELDS, &m);
                    img
                }
            ),
            1 => prop::collection::vec(any::<u8>(), 0..2048),
            1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(|mut b| {
                b.splice(0..0, *b"\x7fELF\x02\x01\x01\0");
                b
            }),
        ]
    }

    /// An initrd: none, a few random bytes, or a sparse file (zeros) sized around what
    /// still fits in RAM.
    #[derive(Debug, Clone)]
    enum Initrd {
        Bytes(Vec<u8>),
        Sparse(u64),
    }

    fn initrd() -> impl Strategy<Value = Option<Initrd>> {
        prop_oneof![
            8 => Just(None),
            8 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| Some(Initrd::Bytes(b))),
            1 => prop_oneof![Just(0u64), (RAM - 10 * MIB)..(RAM + 0x1000)]
                .prop_map(|n| Some(Initrd::Sparse(n))),
        ]
    }

    fn cmdline() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just("console=ttyS0 reboot=k panic=-1".to_string()),
            2 => "[ -~]{0,64}",
            1 => any::<String>(),
            1 => (1000..5000usize).prop_map(|n| "x".repeat(n)),
        ]
    }

    /// Where this test thread's files go (tests run in parallel): tmpfs when there is one,
    /// as rewriting a file per case on a disk with online discard costs milliseconds each.
    fn files(tag: &str) -> (PathBuf, PathBuf) {
        let t = format!("{tag}-{:?}", std::thread::current().id()).replace(['(', ')'], "");
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            // One directory per test thread: each removes its own when done.
            let dir = shm.join(format!("faultline-boot-fuzz-{}-{t}", std::process::id()));
            if std::fs::create_dir_all(&dir).is_ok() {
                return (
                    dir.join(format!("{t}-kernel")),
                    dir.join(format!("{t}-initrd")),
                );
            }
        }
        (
            tmpfile(&format!("{t}-kernel"), &[]),
            tmpfile(&format!("{t}-initrd"), &[]),
        )
    }

    /// What must hold whenever `load_kernel` accepts an image.
    fn check_loaded(m: &GuestMemoryMmap, k: &LoadedKernel) -> Result<(), TestCaseError> {
        if let Some((addr, size)) = k.initrd {
            prop_assert!(addr % 4096 == 0);
            prop_assert!(addr + size <= RAM, "initrd {addr:#x}+{size:#x} past RAM");
            prop_assert!(addr + size <= FOUR_GIB);
        }
        prop_assert!(k.cmdline.chars().all(|c| (' '..='~').contains(&c)));
        prop_assert!(k.cmdline.len() < CMDLINE_MAX_SIZE);
        prop_assert_eq!(read_cstr(m, CMDLINE_START), k.cmdline.clone());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Kernel images, initrds and command lines of any shape: an answer, never a panic.
        #[test]
        fn fuzz_load_kernel(img in image(), rd in initrd(), cl in cmdline(), vcpus in 1..=4u32, pvh in any::<bool>()) {
            let (kp, rp) = files("fuzz-load");
            std::fs::write(&kp, &img).unwrap();
            let mut c = if pvh { cfg_pvh(&kp) } else { cfg(&kp) };
            c.cmdline = cl;
            match &rd {
                Some(Initrd::Bytes(b)) => std::fs::write(&rp, b).unwrap(),
                Some(Initrd::Sparse(n)) => {
                    let f = std::fs::File::create(&rp).unwrap();
                    f.set_len(*n).unwrap();
                }
                None => {}
            }
            if rd.is_some() {
                c.initrd = Some(rp.clone());
            }
            let m = mem(RAM);
            let res = load_kernel(&m, &c, vcpus);
            for p in [&kp, &rp] {
                let _ = std::fs::remove_file(p);
            }
            if let Some(dir) = kp.parent().filter(|d| d.starts_with("/dev/shm")) {
                let _ = std::fs::remove_dir(dir);
            }
            if let Ok(k) = res {
                check_loaded(&m, &k)?;
            }
        }

        /// Raw bytes as the busybox binary the initramfs checks.
        #[test]
        fn fuzz_static_elf_check(mut b in prop::collection::vec(any::<u8>(), 0..256), fields in prop::collection::vec((0..64usize, any::<u64>()), 0..4)) {
            if b.len() >= 64 {
                b[..6].copy_from_slice(b"\x7fELF\x02\x01");
                b[18..20].copy_from_slice(&62u16.to_le_bytes());
                for (o, v) in fields {
                    let o = o.min(56);
                    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            let _ = initramfs::is_static_x86_64_elf(&b);
        }
    }

    /// The generators must reach every format's success path, not only the header checks.
    #[test]
    fn generated_images_often_load() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (kp, _) = files("fuzz-reach");
        let mut loaded = std::collections::BTreeMap::<String, u32>::new();
        for i in 0..400 {
            let img = image().new_tree(&mut runner).unwrap().current();
            std::fs::write(&kp, &img).unwrap();
            let m = mem(RAM);
            let c = if i % 2 == 1 { cfg_pvh(&kp) } else { cfg(&kp) };
            let key = match load_kernel(&m, &c, 1) {
                Ok(k) => format!("{:?}", k.format),
                Err(e) => format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_string(),
            };
            *loaded.entry(key).or_default() += 1;
        }
        let _ = std::fs::remove_file(&kp);
        if let Some(dir) = kp.parent().filter(|d| d.starts_with("/dev/shm")) {
            let _ = std::fs::remove_dir(dir);
        }
        eprintln!("outcomes of 400 generated images: {loaded:?}");
        for f in ["BzImage", "ElfPvh", "Elf64"] {
            assert!(loaded.get(f).copied().unwrap_or(0) >= 10, "{f}: {loaded:?}");
        }
    }

    /// Regression (a case `fuzz_load_kernel` generates): a bzImage whose pref_address + init_size overflows.
    #[test]
    fn bzimage_with_overflowing_pref_address_is_too_large_not_a_panic() {
        let mut img = fake_bzimage(XLF_KERNEL_64, &[0x90; 512]);
        img[0x258..0x260].copy_from_slice(&u64::MAX.to_le_bytes());
        let k = tmpfile("bz-pref-max", &img);
        let e = load_kernel(&mem(RAM), &cfg(&k), 1).unwrap_err();
        assert!(matches!(e, BootError::KernelTooLarge { .. }), "{e}");
    }

    /// Regression (found by `fuzz_load_kernel`): a bzImage claiming `cmdline_size` =
    /// 0xffff_ffff let a long `--cmdline` be written past 64 KiB from `CMDLINE_START`; the
    /// limit is now capped at [`CMDLINE_MAX_SIZE`].
    #[test]
    fn bzimage_claiming_a_huge_cmdline_size_is_capped() {
        let mut img = fake_bzimage(XLF_KERNEL_64, &[0x90; 512]);
        img[0x238..0x23c].copy_from_slice(&u32::MAX.to_le_bytes());
        let k = tmpfile("bz-cmdline-max", &img);
        let mut c = cfg(&k);
        c.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        let e = load_kernel(&mem(RAM), &c, 1).unwrap_err();
        assert!(
            matches!(e, BootError::CmdlineTooLong { max, .. } if max == CMDLINE_MAX_SIZE - 1),
            "{e}"
        );
        c.cmdline = "x".repeat(5000);
        let k = load_kernel(&mem(RAM), &c, 1).unwrap();
        assert!(k.cmdline.starts_with(&c.cmdline));
    }

    /// Regression (a case `fuzz_static_elf_check` generates): program headers at an offset that overflows.
    #[test]
    fn static_elf_check_with_overflowing_phoff_is_false_not_a_panic() {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[32..40].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        assert!(!initramfs::is_static_x86_64_elf(&b));
    }
}
