#!/usr/bin/env python3
"""Emulated instructions per guest function from emulation-trace.py's OUTDIR/rips.tsv,
symbolized with `nm -n` of the unstripped vmlinux; optionally only seconds [FROM_S, TO_S).
"""
import sys, subprocess, bisect, collections
out, vml = sys.argv[1], sys.argv[2]
lo = float(sys.argv[3]) if len(sys.argv) > 3 else -1
hi = float(sys.argv[4]) if len(sys.argv) > 4 else 1e9
syms = []
for l in subprocess.run(['nm', '-n', vml], capture_output=True, text=True).stdout.splitlines():
    parts = l.split()
    if len(parts) == 3 and parts[1] in 'tTwW':
        syms.append((int(parts[0], 16), parts[2]))
addrs = [a for a, _ in syms]
def sym(rip):
    i = bisect.bisect_right(addrs, rip) - 1
    if i < 0: return hex(rip)
    return f'{syms[i][1]}'
per_fn = collections.Counter(); per_rip = collections.Counter(); total = 0
for l in open(f'{out}/rips.tsv'):
    sec, rip, ins, n = l.split('\t'); sec = int(sec); n = int(n)
    if not (lo <= sec < hi): continue
    r = int(rip, 16)
    per_fn[sym(r)] += n; per_rip[(r, ins)] += n; total += n
print('total emulated', total)
for f, n in per_fn.most_common(40):
    print(f'{n:9d} {100*n/total:5.1f}% {f}')
print('--- top rips')
for (r, ins), n in per_rip.most_common(30):
    i = bisect.bisect_right(addrs, r) - 1
    print(f'{n:9d} {r:x} {syms[i][1]}+{r-syms[i][0]:#x} {ins}')
