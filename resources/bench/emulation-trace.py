#!/usr/bin/env python3
"""Where a Linux boot's emulated instructions go (README, Known problems).

    resources/bench/emulation-trace.py OUTDIR -- faultline run --kernel vmlinux -- true
    resources/bench/emulation-symbols.py OUTDIR vmlinux.debug [FROM_S TO_S]

Runs the command (as root) with a tracefs instance of its own, filtered to the command's
threads (set_event_pid + event-fork), counting kvm events per second and
kvm:kvm_emulate_insn per guest RIP. Writes OUTDIR/console.txt (seconds since start on
CLOCK_MONOTONIC, then the line), OUTDIR/events.tsv (second, event, count) and
OUTDIR/rips.tsv (second, RIP, first instruction byte, count). EVENTS overrides the list.
"""
import os, sys, subprocess, threading, time, collections, re

out = sys.argv[1]
cmd = sys.argv[sys.argv.index('--') + 1:]
os.makedirs(out, exist_ok=True)
T = '/sys/kernel/tracing'
inst = f'{T}/instances/boottrace{os.getpid()}'
os.mkdir(inst)

def w(path, val):
    with open(f'{inst}/{path}', 'w') as f:
        f.write(val)

events = os.environ.get('EVENTS', 'kvm:kvm_emulate_insn kvm:kvm_exit kvm:kvm_inj_virq kvm:kvm_hypercall kvm:kvm_msr kvm:kvm_pio kvm:kvm_mmio kvm:kvm_vcpu_wakeup kvm:kvm_apic_ipi kvm:kvm_page_fault kvm:kvm_apic_accept_irq kvm:kvm_pv_eoi kvm:kvm_eoi kvm:kvm_userspace_exit kvm:kvm_fpu kvm:kvm_cr kvm:kvm_inj_exception kvmmmu:kvm_mmu_pagetable_walk').split()
w('buffer_size_kb', '32768')
w('trace_clock', 'mono')
w('options/event-fork', '1')
for e in events:
    sysname, name = e.split(':')
    try:
        w(f'events/{sysname}/{name}/enable', '1')
    except OSError as ex:
        print('cannot enable', e, ex, file=sys.stderr)

t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
wrapped = ['sh', '-c', f'echo $$ > {inst}/set_event_pid; exec "$@"', 'sh'] + cmd
p = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
ev = collections.Counter()
rips = collections.Counter()
stop = False
line_re = re.compile(r'\s(\d+\.\d+): (\w+):(.*)$')
emu_re = re.compile(r'^\s*([0-9a-f]+):([0-9a-f]+):([0-9a-f]*)')

def reader():
    with open(f'{inst}/trace_pipe', 'r', errors='replace') as f:
        for line in f:
            m = line_re.search(line)
            if not m:
                continue
            ts = float(m.group(1)) - t0
            sec = int(ts)
            name = m.group(2)
            ev[(sec, name)] += 1
            if name == 'kvm_emulate_insn':
                m2 = emu_re.match(m.group(3))
                if m2:
                    rips[(sec, m2.group(2), m2.group(3))] += 1

th = threading.Thread(target=reader, daemon=True)
th.start()
with open(f'{out}/console.txt', 'w') as con:
    for raw in p.stdout:
        ts = time.clock_gettime(time.CLOCK_MONOTONIC) - t0
        con.write(f'{ts:9.3f} {raw.decode(errors="replace").rstrip()}\n')
        con.flush()
rc = p.wait()
time.sleep(2)
w('tracing_on', '0')
time.sleep(1)
with open(f'{out}/events.tsv', 'w') as f:
    for (sec, name), n in sorted(ev.items()):
        f.write(f'{sec}\t{name}\t{n}\n')
with open(f'{out}/rips.tsv', 'w') as f:
    for (sec, rip, ins), n in sorted(rips.items()):
        f.write(f'{sec}\t{rip}\t{ins}\t{n}\n')
# Events the ring buffer overwrote or dropped before trace_pipe was read: the counts above
# are lower bounds by this much (OUTDIR/lost.tsv, per CPU).
lost = 0
with open(f'{out}/lost.tsv', 'w') as f:
    for cpu in sorted(os.listdir(f'{inst}/per_cpu')):
        st = dict(l.split(':', 1) for l in open(f'{inst}/per_cpu/{cpu}/stats') if ':' in l)
        o, d = int(st.get('overrun', '0')), int(st.get('dropped events', '0'))
        lost += o + d
        f.write(f'{cpu}\toverrun\t{o}\tdropped\t{d}\n')
print(f'events lost by the ring buffer: {lost} (OUTDIR/lost.tsv)', file=sys.stderr)
for e in events:
    sysname, name = e.split(':')
    try:
        w(f'events/{sysname}/{name}/enable', '0')
    except OSError:
        pass
try:
    os.rmdir(inst)
except OSError as ex:
    print(f'could not remove {inst} ({ex}); remove it with: rmdir {inst}', file=sys.stderr)
print('exit status', rc, file=sys.stderr)
sys.exit(0)
