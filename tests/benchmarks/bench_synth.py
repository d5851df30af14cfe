"SynthReID generation throughput: prints images/s for a preset (default 'smoke'), drawing only and end to end."
import sys, time, tempfile
from pathlib import Path
import numpy as np
from reid_nb.data.synth import (generate_synthreid, synth_params, synth_plan, sample_identity, camera_style,
                                camera_scene, render_image)

def bench(size='smoke', seed=0):
    p = synth_params(size); h, w = p['height'], p['width']
    cams = {c: camera_style(seed, c) for c in range(1, p['n_cams'] + 1)}
    scenes = {c: camera_scene(seed, cams[c], 2*h, 2*w) for c in cams}
    plan = [e for e in synth_plan(p, seed) if e['kind'] == 'id'][:300]
    t0 = time.perf_counter()
    for e in plan:
        render_image(sample_identity(seed, e['pid']), cams[e['cam']], np.random.default_rng([seed, e['j']]), h, w, scenes[e['cam']])
    draw = len(plan)/(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); root = generate_synthreid(Path(d)/size, size, seed=seed, progress=False)
        dt = time.perf_counter() - t0
        n = sum(1 for f in root.rglob('*.jpg'))
    print(f"SynthReID '{size}' ({h}x{w}): drawing only {draw:.0f} images/s; end to end (JPEG, part PNG, annotations, "
          f"COCO export) {n} images in {dt:.1f} s = {n/dt:.0f} images/s; drawing/end-to-end ratio {draw/(n/dt):.2f}")

if __name__ == '__main__': bench(*sys.argv[1:2])
