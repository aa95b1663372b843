# Summary of an ncu source page (--page source --csv --print-source sass): instruction counts
# and stall samples per opcode, and per region between BAR.SYNCs. Usage: python sass_summary.py FILE.csv
import csv,collections,sys
rows=list(csv.reader(open(sys.argv[1])))
hi=[i for i,r in enumerate(rows) if 'Source' in r][0]; h=rows[hi]; data=rows[hi+1:]
ix={n:i for i,n in enumerate(h)}
st=[n for n in h if n.startswith('stall_') and 'Not Issued' not in n]   # all samples, not the not-issued subset
tot=collections.Counter(); ops=collections.Counter(); sops=collections.Counter()
num=lambda x: float(x.replace(',','') or 0)
# regions split by BAR.SYNC
reg=0; regs=collections.defaultdict(lambda: [0,0,collections.Counter()])
for r in data:
    src=r[ix['Source']].strip(); op=src.split()[0] if src else ''
    if op.startswith('@'): op=src.split()[1]
    opb=op.split('.')[0]
    n=num(r[ix['Instructions Executed']]); s=num(r[ix['Warp Stall Sampling (All Samples)']])
    ops[opb]+=n; sops[opb]+=s
    for k in st: tot[k]+=num(r[ix[k]])
    if 'BAR.SYNC' in src or 'BAR.SYNC' in op: reg+=1
    regs[reg][0]+=n; regs[reg][1]+=s
    for k in st: regs[reg][2][k]+=num(r[ix[k]])
T=sum(tot.values()); print('total inst %.3gG'%(sum(ops.values())/1e9))
print('stalls:', [(k[6:], round(v/T*100,1)) for k,v in tot.most_common(8)])
print('ops:', [(k, '%.0fM'%(v/1e6)) for k,v in ops.most_common(14)])
print('stall samples by op:', [(k, round(v/T*100,1)) for k,v in sops.most_common(10)])
for k,(n,s,c) in sorted(regs.items()):
    if n>0.02*sum(ops.values()): print('region',k,'%.0fM inst'%(n/1e6),'%.1f%% samples'%(s/T*100), [(a[6:],round(b/T*100,1)) for a,b in c.most_common(3)])
