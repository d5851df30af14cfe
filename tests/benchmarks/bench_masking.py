"""Masking throughput: images/s batched vs one crop at a time, for the torchvision backends and ground truth.

Usage: python tests/benchmarks/bench_masking.py [n_images [batch_size [threads]]]
The R50-FPN models are randomly initialised offline (no COCO weights): their timing is that of the real models
(same architecture, same number of kept detections, `box_detections_per_img=10`), at the crops' own resolution."""
import sys, time, warnings, tempfile
from pathlib import Path
import torch
from reid_nb.data.synth import generate_synthreid, load_synth_annotations
from reid_nb.data.pipeline import read_image
from reid_nb.masking import TorchvisionMasker, GroundTruthMasker, light_mra_model, native_size, extract_masks

def rate(masker, imgs, paths, batch_size):
    t0 = time.perf_counter()
    for i in range(0, len(imgs), batch_size): masker(imgs[i:i + batch_size], paths[i:i + batch_size])
    return len(imgs)/(time.perf_counter() - t0)

def main(n=32, batch_size=8, threads=1):
    n, batch_size = int(n), int(batch_size); torch.set_num_threads(int(threads)); torch.set_flush_denormal(True)
    root = generate_synthreid(size='smoke', seed=0, progress=False)
    paths = [root/'bounding_box_test'/f'{s}.jpg' for s in sorted(load_synth_annotations(root, 'bounding_box_test'))][:n]
    imgs = [read_image(p) for p in paths]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        maskers = {'torchvision R50-FPN pair, native 128x64': TorchvisionMasker.paper(**native_size(128, 64)),
                   'torchvision R50-FPN pair, 2x (256x128)': TorchvisionMasker.paper(**native_size(128, 64, 2)),
                   'light MRA (R18-FPN joint), 2x': TorchvisionMasker(light_mra_model(), None, 'random-seed0'),
                   'ground truth': GroundTruthMasker()}
    print(f"{n} SynthReID crops (128x64), batch {batch_size}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    for name, m in maskers.items():
        m(imgs[:2], paths[:2])                                  # warm-up
        one, batched = rate(m, imgs, paths, 1), rate(m, imgs, paths, batch_size)
        print(f"  {name:42s} one at a time {one:7.1f} img/s | batched {batched:7.1f} img/s | ratio {batched/one:.2f}x", flush=True)
    with tempfile.TemporaryDirectory() as d:
        m = maskers['light MRA (R18-FPN joint), 2x']
        t0 = time.perf_counter(); extract_masks(m, paths, 'bench', Path(d)/'s', batch_size=batch_size, progress=False)
        print(f"  extract_masks (light MRA, read + mask + compressed shards): {n/(time.perf_counter() - t0):.1f} img/s")

if __name__ == '__main__': main(*sys.argv[1:4])
