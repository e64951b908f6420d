"""Same results, same speed? Whole-image and block-wise prediction of one checkout vs another.

Run it once per checkout, alternating (``PYTHONPATH=<other checkout>/src``), with a tag; it
prints seconds for 1024 x 1024 instances and probabilities of the packaged nuclei sample
(mirror-tiled) and for 2600 x 2600 block-wise probabilities, and saves the arrays under
``--out`` so two runs can be compared exactly::

    PYTHONPATH=/tmp/old/src python benchmarks/compare_engine.py old1
    python benchmarks/compare_engine.py new1
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dask.array as da
import numpy as np

from bench_gui import nuclei_1024
from tiled_unet.core.blockwise import segment_blockwise
from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.predict import segment

tag = sys.argv[1]
out = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/compare_engine")
out.mkdir(parents=True, exist_ok=True)
img = nuclei_1024(1024)
big = np.tile(img, (3, 3))[:2600, :2600]
ck = resolve_model("nuclei")
segment(ck, img[:256, :256], device="cpu")  # warm
t = time.perf_counter()
lab = segment(ck, img, device="cpu")
t1 = time.perf_counter() - t
t = time.perf_counter()
prob = segment(ck, img, device="cpu", output="probabilities")
t2 = time.perf_counter() - t
t = time.perf_counter()
bw = segment_blockwise(ck, da.from_array(big, chunks=1024), device="cpu", output="probabilities", block=1024)[
    :
]
t3 = time.perf_counter() - t
np.save(out / f"{tag}_prob.npy", prob)
np.save(out / f"{tag}_lab.npy", lab)
np.save(out / f"{tag}_bw.npy", bw.astype(np.float32))
print(
    json.dumps(
        {
            "tag": tag,
            "instances_s": round(t1, 3),
            "probs_s": round(t2, 3),
            "blockwise_2600_s": round(t3, 3),
            "objects": int(lab.max()),
        }
    )
)
