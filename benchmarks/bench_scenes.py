"""Scene-world generation speed: images/s at 256 px on one core (goal ≥ 200), JPEG vs PNG, 1 vs 2 workers.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_scenes.py [--num-images 1000]
Measures the full job (layout, rendering, captions, questions, encoding, writing the JSON files).
"""
import argparse
import tempfile
import time

from vlptm.data.scenes import generate_world


def _rate(num_images: int, **kwargs) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        generate_world(out, num_images, seed=0, **kwargs)
        return num_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    _rate(50, image_size=args.image_size)  # warm caches
    cases = {"jpg, 1 worker": {"image_format": "jpg"}, "png, 1 worker": {"image_format": "png"},
             "jpg, 2 workers": {"image_format": "jpg", "workers": 2}}
    rates = {name: [] for name in cases}
    for _ in range(2):  # interleave repeats: the machine is shared and noisy
        for name, kwargs in cases.items():
            rates[name].append(_rate(args.num_images, image_size=args.image_size, **kwargs))
    base = max(rates["jpg, 1 worker"])
    print(f"scene generation, {args.num_images} images at {args.image_size} px (best of 2)")
    for name, values in rates.items():
        print(f"  {name:15s} {max(values):7.1f} images/s   ({max(values) / base:.2f}x jpg/1 worker)")
    print(f"goal ≥ 200 images/s on one core: {'met' if base >= 200 else 'NOT met'}")


if __name__ == "__main__":
    main()
