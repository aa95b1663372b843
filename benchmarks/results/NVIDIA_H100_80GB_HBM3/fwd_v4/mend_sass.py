"""How mend_sass.json was made: every kernel of the CUDA scan records rendered before and
after the review's template change, compiled for sm_90 (nvcc / NVRTC of the CPU box), and its
SASS (cuobjdump -sass, addresses and encodings stripped) hashed. Equal SASS: the records are
restamped, not re-timed. Run as: python mend_sass.py SOURCES.json OUT.json"""
import hashlib
import json
import re
import subprocess
import sys

from ssmgen.backends import cuda_runtime as cr

CUOBJDUMP = "cuobjdump"


def sass(name, source):
    text = subprocess.run([CUOBJDUMP, "-sass", str(cr.compile_cubin(name, source, 90))],
                          capture_output=True, text=True).stdout
    return [re.sub(r"/\*[0-9a-f]+\*/", "", line).split(";")[0].strip()
            for line in text.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", line)]


src = json.load(open(sys.argv[1]))
json.dump({k: hashlib.sha1("\n".join(sass(k, s)).encode()).hexdigest()[:12] for k, s in src.items()},
          open(sys.argv[2], "w"), indent=1, sort_keys=True)
