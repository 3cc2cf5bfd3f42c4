"""The markdown report of benchmarks/device_check.py (device_check.md): the measurements as tables."""

from __future__ import annotations

from typing import Any

# ----------------------------------------------------------------------------------------------
# The markdown report


def number(value: Any, digits: int = 3) -> str:
    """A table cell: a number to ``digits`` significant digits; a reason in a cell shortened (the JSON keeps it)."""
    if isinstance(value, str) and value.startswith("not measured"):
        return "not measured"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return str(value)


def outcome(measurement: Any) -> str | None:
    """ "error: ..." or "not measured: ..." for a measurement that has no numbers, else None."""
    if isinstance(measurement, dict):
        if isinstance(measurement.get("error"), str):  # (the CUDA tests' "error" is a count of errored tests)
            return f"error: {measurement['error']}"
        if "not_measured" in measurement:
            return f"not measured: {measurement['not_measured']}"
    return None


def summary_line(measurement: Any) -> str:
    if outcome(measurement):
        return str(outcome(measurement))
    if not isinstance(measurement, dict):
        return str(measurement)
    keys = (
        *("name", "samples_per_s", "step_ms", "optimizer_ms", "frames_per_s", "total_ms", "p99_ms"),
        *("peak_memory_gib", "mfu"),
    )
    return ", ".join(f"{key} {number(measurement[key])}" for key in keys if key in measurement)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in row) + " |" for row in rows]
    return lines


def rows_of(measurement: Any, label: list[str], columns: list[tuple[str, int]], width: int) -> list[str]:
    """A table row: the label cells, then the columns' numbers, or the measurement's error across them."""
    text = outcome(measurement)
    if text is not None or not isinstance(measurement, dict):
        return label + [text or str(measurement)] + [""] * (width - len(label) - 1)
    return label + [number(measurement.get(key, "—"), digits) for key, digits in columns]


def percent(value: Any) -> Any:
    return f"{100 * value:.1f}%" if isinstance(value, float) else value


def render_markdown(results: dict[str, Any]) -> str:
    device = results.get("device", {})
    name = device.get("name") if isinstance(device, dict) and "name" in device else None
    title = name or f"unknown device ({outcome(device) or 'the device part has not run'})"
    lines = [f"# Device check: {title}", ""]
    stand_in = " (dry run: tiny models stand in)" if results.get("dry_run") else ""
    if results.get("dry_run"):
        lines += [
            "**Dry run on the CPU**: tiny-preset models stand in for sd14, 1-2 iterations per configuration,",
            "torch.compile through the eager backend. These numbers test the script; they are no sd14 measurement.",
            "",
        ]
    lines.append(f"Started {results.get('started')}, last part finished {results.get('finished', 'not yet')}.")
    lines.append("")
    if isinstance(device, dict) and outcome(device) is None:
        keys = ("name", "torch", "cuda", "cudnn", "diffusers", "memory_gib")
        rows = [[key, number(device.get(key, "—"))] for key in keys]
        peak = device.get("bf16_peak_tflops")
        peak = f"{number(peak)} ({device.get('bf16_peak_source')})" if isinstance(peak, float) else str(peak)
        rows.append(["dense bf16 peak used for MFU (TFLOP/s)", peak])
        rows.append(["bf16 matmul 8192^3, measured (TFLOP/s)", str(number(device.get("bf16_matmul_tflops")))])
        lines += table(["device", ""], rows)
    else:
        lines.append(f"Device: {outcome(device) or device}")
    tests = results.get("cuda_tests", {})
    lines += ["", f"**CUDA tests** (pytest -m cuda): {outcome(tests) or tests.get('summary')}", ""]
    if tests.get("tests"):
        lines += table(["test", "outcome"], [[name, result] for name, result in tests["tests"].items()]) + [""]

    train_columns = [
        ("samples_per_s", 3),
        ("step_ms", 3),
        ("forward_backward_ms", 3),
        ("optimizer_ms", 3),
        ("peak_memory_gib", 3),
        ("achieved_tflops", 3),
        ("mfu", 3),
        ("setup_s", 3),
    ]
    train_header = ["mode", "batch", "samples/s", "step ms", "fwd+bwd ms", "optimizer ms", "peak GiB", "TFLOP/s", "MFU"]
    train_header.append("setup s")
    lines += [f"## Training step: sd14 world model, bf16 autocast, clipping{stand_in}", ""]
    lines += [
        "defaults: the trainer's GPU defaults (fused AdamW, channels-last weights); each other mode changes one.",
        "",
    ]
    rows = []
    for mode, measurements in results.get("train_sd14", {}).items():
        for key, measurement in measurements.items() if outcome(measurements) is None else [("", measurements)]:
            if outcome(measurement) is None:
                measurement = {**measurement, "mfu": percent(measurement.get("mfu"))}
            rows.append(rows_of(measurement, [mode, key.removeprefix("batch_")], train_columns, len(train_header)))
    lines += table(train_header, rows)

    optimizers = results.get("optimizer_sd14", {})
    lines += ["", f"## Optimizer phase alone: sd14 parameters, clipping + step + zero_grad{stand_in}", ""]
    optimizer_header = ["optimizer", "ms per step", "tensors", "parameters (M)", "peak GiB", "setup s"]
    optimizer_columns = [("optimizer_ms", 3), ("tensors", 4), ("parameters_millions", 4)]
    optimizer_columns += [("peak_memory_gib", 3), ("setup_s", 3)]
    optimizer_rows = optimizers.items() if outcome(optimizers) is None else [("all", optimizers)]
    width = len(optimizer_header)
    lines += table(optimizer_header, [rows_of(m, [name], optimizer_columns, width) for name, m in optimizer_rows])

    engine_columns = [
        ("frames_per_s", 3),
        ("unet_ms", 3),
        ("decode_ms", 3),
        ("total_ms", 3),
        ("p50_ms", 3),
        ("p99_ms", 3),
        ("peak_memory_gib", 3),
        ("setup_s", 3),
        ("warmup_s", 3),
    ]
    engine_header = ["mode", "DDIM steps", "frames/s", "UNet ms", "decode ms", "total ms", "p50 ms", "p99 ms"]
    engine_header += ["peak GiB", "setup s", "warm-up s"]
    lines += ["", f"## Engine: sd14 320x256, context 64, CFG 1.5, bf16{stand_in}", ""]
    rows = []
    for mode, measurements in results.get("engine_sd14", {}).items():
        for key, measurement in measurements.items() if outcome(measurements) is None else [("", measurements)]:
            rows.append(rows_of(measurement, [mode, key.removeprefix("steps_")], engine_columns, len(engine_header)))
    lines += table(engine_header, rows)

    tiny = results.get("train_tiny", {})
    lines += ["", "## Training step: tiny preset, AdamW", ""]
    tiny_header = ["configuration", "samples/s", "step ms", "fwd+bwd ms", "optimizer ms", "peak GiB"]
    tiny_rows = tiny.items() if outcome(tiny) is None else [("tiny", tiny)]
    width = len(tiny_header)
    rows = [rows_of(measurement, [key.replace("_", " ")], train_columns[:5], width) for key, measurement in tiny_rows]
    lines += table(tiny_header, rows)

    lines += ["", "## Parts", ""]
    rows = [
        [part, str(info.get("status")), number(info.get("seconds", "—")), number(info.get("timeout_s", "—"))]
        for part, info in results.get("parts", {}).items()
    ]
    lines += table(["part", "status", "seconds", "bound s"], rows)
    return "\n".join(lines) + "\n"
