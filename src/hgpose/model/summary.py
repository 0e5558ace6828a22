"""Per-stage shapes, parameters and FLOPs of an HourglassNet (`hgpose summary`)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from hgpose.model.hourglass import HourglassNet, ModelConfig, count_parameters
from hgpose.model.weights import load_model


def model_summary(config: ModelConfig | None = None) -> dict:
    """Stages in forward order with output shape and parameters, plus totals and GFLOP per image."""
    config = config or ModelConfig()
    model = HourglassNet(config).eval()
    x = torch.zeros(1, 3, config.input_size, config.input_size)
    stages: list[dict] = []

    def record(name, module):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):  # a Head returns (features, heatmaps)
                output = output[1]
            stages.append({"name": name, "output_shape": list(output.shape), "parameters": count_parameters(module)})

        return module.register_forward_hook(hook)

    named = [("stem.conv7x7+bn", model.stem_conv), ("stem.residual1", model.stem_res1),
             ("stem.residual2", model.stem_res2), ("stem.residual3", model.stem_res3)]
    for s, (hourglass, head) in enumerate(zip(model.hourglasses, model.heads)):
        named += [(f"hourglass{s}", hourglass), (f"head{s}", head)]
    handles = [record(name, module) for name, module in named]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    for h in handles:
        h.remove()
    # the stem BN has parameters of its own: add them to the first stage
    stages[0]["parameters"] += count_parameters(model.stem_bn)
    if config.num_stacks > 1:
        merges = count_parameters(model.merge_features) + count_parameters(model.merge_preds)
        stages.append({"name": "merges", "output_shape": None, "parameters": merges})
    return {
        "config": config.__dict__ | {"heatmap_size": config.heatmap_size},
        "stages": stages,
        "total_parameters": count_parameters(model),
        "gflop_per_image": counter.get_total_flops() / 1e9,
        "output_shape": list(out.shape),
    }


def checkpoint_summary(path) -> dict:
    """model_summary of the model a checkpoint holds, its config read from the file. The weights are
    loaded (and checked against the config, as every command does) and their parameters counted,
    so the count is the file's, not only what the config implies."""
    model = load_model(path)
    summary = model_summary(model.config)
    summary["total_parameters"] = count_parameters(model)
    return {"checkpoint": str(path), **summary}


def format_summary(summary: dict) -> str:
    rows = [
        (s["name"], "x".join(map(str, s["output_shape"] or ["-"])), f"{s['parameters']:,}") for s in summary["stages"]
    ]
    widths = [max(len(r[i]) for r in rows + [("stage", "output shape", "parameters")]) for i in range(3)]
    line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    out = [f"checkpoint: {summary['checkpoint']}"] if "checkpoint" in summary else []
    if "checkpoint" in summary:
        out.append("model config: " + ", ".join(f"{k} {v}" for k, v in summary["config"].items()))
    out += [line(("stage", "output shape", "parameters")), "-" * (sum(widths) + 4)]
    out += [line(r) for r in rows]
    out += [
        "-" * (sum(widths) + 4),
        f"total parameters: {summary['total_parameters']:,}",
        f"GFLOP per image:  {summary['gflop_per_image']:.2f} (multiply and add counted as 2)",
        f"output shape:     {'x'.join(map(str, summary['output_shape']))} (batch 1)",
    ]
    return "\n".join(out)
