import json, sys, hashlib
from ssmgen.backends import cuda_backend as cb
from ssmgen.spec import ScanSpec
out = {}
for r in json.load(open('autotune_cache/nvidia_h100_80gb_hbm3.json'))['records']:
    if r.get('backend') != 'cuda' or 'fwd_ms' not in r: continue
    d = json.loads(r['spec']); c = dict(r['config']); d['chunk_len'] = c.pop('chunk_len')
    spec = ScanSpec(**d); cfg = cb.ScanConfig.from_dict(c)
    for main in ('fwd', 'bwd'):
        k = getattr(cfg, main)
        for kind in (main, cb.PREPASS[main]):
            for v in cb.variants(spec, k, kind):
                out[cb.kernel_name(spec, k, kind, v)] = hashlib.sha1(cb.render_source(spec, k, kind, v).encode()).hexdigest()[:12]
json.dump(out, open(sys.argv[1], 'w'), indent=0)
