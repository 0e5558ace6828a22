"""Training-step throughput: a plain eager NCHW fp32 reference step against hgpose's step.

Prints images/s and achieved GFLOP/s (forward + backward, counted by torch's FLOP counter) for each
variant, side by side, in one run on the current device. On a CUDA device the variants are eager,
compiled (`--compile default`) and CUDA graphs (`--compile reduce-overhead`), each in fp32 and bf16;
on the CPU eager fp32 and bf16 (and compiled with --compile). Each eager variant is also timed with
`--augment`'s default augmentation (hgpose.data.augment, on the same device), with its cost over the plain step.
`--layouts channels-last,nchw` times hgpose's eager step in both memory layouts (the measurements behind
hgpose.runtime.memory_format) and prints the layout that rule picks for each precision on this device.
Usage:

    python benchmarks/train_step.py [--batch-size 16] [--steps 5] [--device auto] [--input-size 256]
        [--layouts channels-last[,nchw]] [--no-augment]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from hgpose.data.augment import AugmentConfig, BatchAugment
from hgpose.model.heatmaps import heatmap_loss, render_heatmaps
from hgpose.model.hourglass import ModelConfig, build_model
from hgpose.runtime.allocator import keep_freed_memory
from hgpose.runtime.compile import begin_step, compile_step_model
from hgpose.runtime.device import resolve_device
from hgpose.runtime.memory_format import preferred_memory_format
from hgpose.train.loop import train_step


def make_batch(batch_size: int, config: ModelConfig) -> dict:
    g = torch.Generator().manual_seed(0)
    size, hm = config.input_size, config.heatmap_size
    return {
        "image": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g),
        "keypoints": torch.rand(batch_size, config.num_keypoints, 2, generator=g) * (hm - 1),
        "visibility": torch.full((batch_size, config.num_keypoints), 2),
        "valid": torch.ones(batch_size, dtype=torch.bool),
        "index": torch.arange(batch_size),
    }


def reference_step(model, optimizer, batch, device, heatmap_size):
    """What a straightforward training loop does: NCHW fp32, loss read back every step."""
    images = batch["image"].to(device).float() / 255
    targets, _ = render_heatmaps(batch["keypoints"].to(device), batch["visibility"].to(device), heatmap_size)
    loss = heatmap_loss(model(images), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def step_flops(config: ModelConfig, batch: dict, device) -> float:
    model = build_model(config).to(device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    with FlopCounterMode(display=False) as counter:
        reference_step(model, optimizer, batch, device, config.heatmap_size)
    return counter.get_total_flops()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, step, steps, batch_size, flops, device):
    for _ in range(3):  # warm-up: oneDNN primitive caches, autotuning, compiling, graph capture
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    return {"variant": name, "img_s": batch_size / seconds, "gflop_s": flops / seconds / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated precisions to time (bf16 is emulated, and very slow, on CPUs "
                             "without native bf16)")
    parser.add_argument("--compile", action="store_true",
                        help="on the CPU, also time torch.compile'd steps (slow to compile; always on CUDA)")
    parser.add_argument("--layouts", default="channels-last",
                        help="comma-separated memory layouts of hgpose's eager step: channels-last, nchw")
    parser.add_argument("--no-augment", action="store_true", help="skip the augmented variants")
    args = parser.parse_args()
    layouts = {"channels-last": torch.channels_last, "nchw": torch.contiguous_format}
    device = resolve_device(args.device)
    config = ModelConfig(input_size=args.input_size, features=args.features)
    batch = make_batch(args.batch_size, config)
    flops = step_flops(config, batch, device)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, input {args.input_size}, "
          f"features {args.features}: {flops / args.batch_size / 1e9:.1f} GFLOP per image per training step")

    results = []
    model = build_model(config).to(device)
    opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    reference = lambda: reference_step(model, opt, batch, device, config.heatmap_size)  # noqa: E731
    results.append(measure("reference eager NCHW fp32", reference, args.steps, args.batch_size, flops, device))
    # From here on, like `hgpose train`, glibc keeps freed memory for reuse (hgpose/allocator.py).
    # The reference is timed again under it so that the layout and precision gains can be told apart
    # from the allocator's.
    if device.type == "cpu" and keep_freed_memory():
        results.append(measure("reference, freed memory kept", reference, args.steps, args.batch_size, flops, device))
    if device.type == "cuda":  # what --compile offers on a GPU, side by side
        modes = ["off", "default", "reduce-overhead"]
    else:
        modes = ["off", "default"] if args.compile else ["off"]
    names = {"off": "eager", "default": "compiled", "reduce-overhead": "CUDA graphs"}
    variants = [(mode, precision, layout) for mode in modes for precision in args.precisions.split(",")
                for layout in (args.layouts.split(",") if mode == "off" else ["channels-last"])]
    for mode, precision, layout in variants:
        model = build_model(config).to(device).to(memory_format=layouts[layout])
        opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
        runner, graphs = compile_step_model(model, mode, device)
        cl = layout == "channels-last"

        def step(r=runner, o=opt, p=precision, g=graphs, a=None, cl=cl):
            begin_step(g)
            return train_step(r, o, batch, device, p, config.heatmap_size, channels_last=cl, augment=a)

        name = f"hgpose {layout} {precision} {names[mode]}"
        results.append(measure(name, step, args.steps, args.batch_size, flops, device))
        print(f"  {name}: {results[-1]['img_s']:.1f} img/s", flush=True)
        if mode == "off" and not args.no_augment:  # the same step with --augment's defaults
            augment = BatchAugment(AugmentConfig(enabled=True), seed=0, epoch=1, heatmap_size=config.heatmap_size)
            plain = results[-1]["img_s"]
            results.append(measure(name + " + augment", lambda s=step, a=augment: s(a=a), args.steps,
                                   args.batch_size, flops, device))
            print(f"  {name} + augment: {results[-1]['img_s']:.1f} img/s "
                  f"({plain / results[-1]['img_s'] - 1:+.1%} time per step)", flush=True)

    for precision in args.precisions.split(","):
        picked = preferred_memory_format(device, precision)
        print(f"hgpose.runtime.memory_format picks {'channels-last' if picked == torch.channels_last else 'nchw'} "
              f"for {precision} on {device}")
    base, kept = results[0]["img_s"], results[1]["img_s"] if "kept" in results[1]["variant"] else None
    print(f"{'variant':44s} {'img/s':>9s} {'GFLOP/s':>9s} {'vs reference':>13s}"
          + (f" {'vs reference, memory kept':>26s}" if kept else ""))
    for r in results:
        line = f"{r['variant']:44s} {r['img_s']:9.2f} {r['gflop_s']:9.1f} {r['img_s'] / base:12.2f}x"
        print(line + (f" {r['img_s'] / kept:25.2f}x" if kept else ""))


if __name__ == "__main__":
    main()
