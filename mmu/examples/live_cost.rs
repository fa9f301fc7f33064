//! Times `ScenarioRunner::push` on a 256 MiB mirror: what live mode pays the model per fault.
use mmu::scenario::{ModelOptions, Scenario, ScenarioRunner, Step};
fn main() {
    let sc = Scenario::from_toml("[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"256M\"\n[[memslot]]\nid = 0\ngpa = 0\nsize = \"256M\"\nhva = \"0x7f0000000000\"\n").unwrap();
    let only_off = std::env::args().nth(1).as_deref() == Some("off");
    for track in [true, false] {
        if only_off && track {
            continue;
        }
        let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        r.set_track_contents(track);
        let n = 8192u64;
        let steps: Vec<Step> = (0..n)
            .map(|i| {
                let op = if i % 2 == 0 { "read" } else { "write" };
                let gpa = (i / 2) * 4096 + (64 << 20);
                Step::from_table(
                    0,
                    toml::from_str(&format!("op = \"{op}\"\ngpa = {gpa}")).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let t = std::time::Instant::now();
        for (i, st) in steps.into_iter().enumerate() {
            r.push(st).unwrap();
            if i == 999 {
                println!(
                    "  first 1000: {} ns per step",
                    t.elapsed().as_nanos() / 1000
                );
            }
        }
        println!(
            "track_contents {track}: {} ns per step over {n}",
            t.elapsed().as_nanos() as u64 / n
        );
    }
}
