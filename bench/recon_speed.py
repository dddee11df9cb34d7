"""Reconstruction speed: our optimisation loop against a bare forward+backward of the same encoder.

For each image size and batch, prints the seconds per pass of a bare forward+backward through
the frozen encoder (its plain ``forward``, gradient to the input only: the floor of any feature
inversion), the seconds per iteration of our loop for the ``lbfgs`` (the default) and ``gd``
optimisers with all layers of the encoder in the loss, the loss evaluations per L-BFGS iteration,
our overhead over the bare pass, and how many 200-iteration reconstructions finish per second.
Issue 5 asks the overhead to stay within 10%.

With ``--device cuda`` it also runs the paper's full setting once: VGG19, 224 px, 200 iterations,
a batch of 50, and prints the seconds per image (target: under 0.5 s on an H100-class GPU).

Both run with glibc's malloc keeping freed memory for reuse, as ``reconstruct`` sets it
(bidsrecon/recon/allocator.py). The weights are random (``vgg19-random``; timing does not depend
on them). The last line is a one-line summary; ``--quick`` runs the 128-px rows only,
``--paper-only`` (CUDA) the paper's setting only.

Usage: python bench/recon_speed.py [--quick | --paper-only] [--device cpu|cuda|auto] [--mixed-precision]
"""
import argparse
import contextlib
import platform
import time

import numpy as np
import torch

from bidsrecon.encoders import get_encoder, resolve_device
from bidsrecon.recon import reconstruct
from bidsrecon.recon.allocator import freed_memory_kept

#: Iterations timed per measurement, after one warm-up iteration, by device type: a GPU iteration
#: takes milliseconds, so more of them are needed to rise above the timer's and set-up's noise.
TIMED_ITERATIONS = {"cpu": 3, "cuda": 40, "mps": 40}
#: Each measurement is repeated and its fastest kept: on a shared machine, the slower repeats
#: measure the neighbours.
REPEATS = 5
PAPER_ITERATIONS = 200


def synchronise(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def smooth_images(n_items, size, seed=0):
    """Blocky random images: feature targets with realistic structure, reproducible."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(size=(n_items, 3, 8, 8)).astype(np.float32)
    return torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear")


def true_features(encoder, images):
    with torch.no_grad():
        return {name: value.cpu().numpy() for name, value in encoder.features(images.to(encoder.device)).items()}


def bare_seconds_per_pass(encoder, images, mixed_precision):
    """Seconds of one forward+backward through the plain module (gradient to the input only)."""
    module = encoder._module
    device = encoder.device
    timed = TIMED_ITERATIONS[device.type]
    images = images.to(device)

    def one_pass():
        pixels = images.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed_precision):
            output = module(pixels)
        (grad,) = torch.autograd.grad(output.float().sum(), pixels)
        return grad

    one_pass()
    timings = []
    for _ in range(REPEATS):
        synchronise(device)
        started = time.perf_counter()
        for _ in range(timed):
            one_pass()
        synchronise(device)
        timings.append((time.perf_counter() - started) / timed)
    return min(timings)


@contextlib.contextmanager
def counted_passes(encoder):
    """Within the block, the batch size of every pass through ``encoder.features`` is recorded
    in the yielded list (the caller clears it per run)."""
    passes = []
    features = encoder.features

    def counting_features(images, layers=None):
        passes.append(len(images))
        return features(images, layers)

    encoder.features = counting_features
    try:
        yield passes
    finally:
        del encoder.features


def evaluations_per_iteration(passes, batch, n_iter):
    """Item evaluations per item and iteration of one run, less its first two passes'
    (_check_targets' probe of a single image, then the start's evaluation of the batch)."""
    return (sum(passes[1:]) / batch - 1) / n_iter


def loop_seconds_per_iteration(encoder, targets, size, optimiser, batch, mixed_precision):
    """Seconds per iteration of ``reconstruct`` (the difference of two runs cancels the set-up)
    and, for L-BFGS, the evaluations of the loss per iteration."""
    timed = TIMED_ITERATIONS[encoder.device.type]

    def run(n_iter):
        passes.clear()
        synchronise(encoder.device)
        started = time.perf_counter()
        reconstruct(encoder, targets, size, optimiser=optimiser, n_iter=n_iter, progress=False,
                    batch_size=batch, mixed_precision=mixed_precision)
        return time.perf_counter() - started  # reconstruct returns NumPy arrays: synchronised

    with counted_passes(encoder) as passes:
        run(1)  # warm-up
        set_up = min(run(1) for _ in range(REPEATS))
        total = min(run(1 + timed) for _ in range(REPEATS))
        evaluations = evaluations_per_iteration(passes, batch, 1 + timed)
    return (total - set_up) / timed, evaluations


def measure_row(encoder, size, batch, mixed_precision):
    images = smooth_images(batch, size)
    targets = true_features(encoder, images)
    bare = bare_seconds_per_pass(encoder, images, mixed_precision)
    lbfgs, evaluations = loop_seconds_per_iteration(encoder, targets, size, "lbfgs", batch, mixed_precision)
    gd, _ = loop_seconds_per_iteration(encoder, targets, size, "gd", batch, mixed_precision)
    return {"size": size, "batch": batch, "bare s/pass": bare, "lbfgs s/iter": lbfgs,
            "evals/iter": evaluations, "lbfgs overhead %": 100 * (lbfgs / bare - 1),
            "lbfgs s/eval overhead %": 100 * (lbfgs / evaluations / bare - 1),
            "gd s/iter": gd, "gd overhead %": 100 * (gd / bare - 1),
            "images/s (200 iter)": batch / (PAPER_ITERATIONS * lbfgs)}


def paper_setting(encoder, mixed_precision, batch=50):
    """VGG19, 224 px, 200 L-BFGS iterations, a batch of 50.

    Returns seconds per image: in all, of which in set-up (a 1-iteration run: checks, layer
    weights, transfers), the floor of 200 bare forward+backward passes; the items evaluated per
    item and iteration (line searches re-evaluate; stopped items are not evaluated); and the mean
    pixel correlation of the reconstructions with the images whose features they invert.
    """
    images = smooth_images(batch, 224, seed=1)
    targets = true_features(encoder, images)

    def seconds(n_iter):
        passes.clear()
        synchronise(encoder.device)
        started = time.perf_counter()
        seconds.result = reconstruct(encoder, targets, 224, n_iter=n_iter, progress=False,
                                     batch_size=batch, mixed_precision=mixed_precision)
        return time.perf_counter() - started

    with counted_passes(encoder) as passes:
        seconds(1)  # warm-up: cuDNN tries its algorithms for these shapes once per process
        set_up = seconds(1)
        total = seconds(PAPER_ITERATIONS)
        evaluations = evaluations_per_iteration(passes, batch, PAPER_ITERATIONS)
    floor = bare_seconds_per_pass(encoder, images, mixed_precision) * PAPER_ITERATIONS
    originals = images.permute(0, 2, 3, 1).numpy()
    correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(seconds.result, originals)])
    return total / batch, set_up / batch, floor / batch, evaluations, correlation


def overhead_rows(encoder, sizes, mixed_precision):
    """Prints a row per size and batch (1 and 8), then the table; returns the summary's part."""
    rows = []
    for size in sizes:
        for batch in (1, 8):
            rows.append(measure_row(encoder, size, batch, mixed_precision))
            print("  ".join(f"{key} {value:.4g}" for key, value in rows[-1].items()), flush=True)

    import pandas as pd
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    worst = table["lbfgs overhead %"].max()
    return (f"lbfgs overhead over bare forward+backward: worst "
            f"{worst:.1f}% ({'within' if worst <= 10 else 'OVER'} 10%), per evaluation worst "
            f"{table['lbfgs s/eval overhead %'].max():.1f}%; gd worst {table['gd overhead %'].max():.1f}%; "
            f"best {table['images/s (200 iter)'].max():.3g} images/s at 200 iterations")


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--quick", action="store_true", help="128-px rows only")
    rows.add_argument("--paper-only", action="store_true",
                      help="no rows: the paper's setting only (CUDA and a VGG19 encoder)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--encoder", default="vgg19-random")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    paper = device.type == "cuda" and args.encoder.startswith("vgg19")
    if args.paper_only and not paper:
        parser.error("--paper-only needs --device cuda and a VGG19 encoder")
    # reconstruct() lets cuDNN choose its algorithms on a GPU; the bare passes get the same.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    encoder = get_encoder(args.encoder, device=device)
    print(f"encoder {encoder.description}; all {len(encoder.layers)} layers in the loss; device "
          f"{describe_device(device)}; torch {torch.__version__}"
          f"{'; bfloat16 autocast' if args.mixed_precision else ''}", flush=True)

    # Everything under the allocator settings reconstruct() runs with (allocator.py): they speed
    # up the bare pass as well (like for like), and held across runs they are not undone between
    # the short timed runs, as they are not within one reconstruction's 200 iterations.
    with freed_memory_kept():
        summary = measure(encoder, args, paper)
    print(summary)


def measure(encoder, args, paper):
    """The rows (unless ``--paper-only``) and the paper's setting (when ``paper``); the summary."""
    summary = f"SUMMARY device={encoder.device.type}"
    if not args.paper_only:
        summary += " " + overhead_rows(encoder, (128,) if args.quick else (128, 224), args.mixed_precision)
    if paper:
        per_image, set_up, floor, evaluations, correlation = paper_setting(encoder, args.mixed_precision)
        print(f"paper setting (VGG19, 224 px, {PAPER_ITERATIONS} iterations, batch 50): "
              f"{per_image:.3f} s per image, of which set-up {set_up:.3f} s; "
              f"{evaluations:.2f} evaluations per item and iteration; pixel correlation with the "
              f"originals {correlation:.3f}; floor of "
              f"{PAPER_ITERATIONS} bare forward+backward passes {floor:.3f} s per image "
              f"(our loop {100 * (per_image / floor - 1):.0f}% over it)")
        summary += (f" | VGG19 224 px 200 iter batch 50: {per_image:.3f} s/image "
                    f"({'under' if per_image < 0.5 else 'OVER'} 0.5)")
    return summary


if __name__ == "__main__":
    main()
