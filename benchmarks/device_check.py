"""The prepared GPU check (issue 15): what the paper-sized world model costs on one accelerator.

Usually run through ``benchmarks/device_check.sh``, which first installs the wheels the GPU machine lacks
and runs the CUDA tests (``pytest -m cuda``); directly:

    python benchmarks/device_check.py [--dry_run] [--output_dir DIR] [--parts a,b] [--part_timeout NAME=SECONDS]
                                      [--time_budget SECONDS]

Each part runs in its own process under a time bound; a part that fails or runs out of time records why
("error: ..." or "not measured: ...") and the next part goes on. ``--time_budget`` bounds the parts
together: each part's bound shrinks to what is left, and the parts that no longer fit are recorded as not
measured (the order below is the priority):

* ``device``: GPU name, torch and CUDA versions, the dense bf16 peak that MFU is taken over, and a
  measured bf16 matrix-product rate (8192^3) for comparison;
* ``train_sd14``: one training step of the sd14 world model (SD v1.4's UNet config with conv_in widened
  to 4 x 65 channels, random weights) on random latent windows at the trainer's GPU defaults (fused AdamW,
  channels-last weights) at batch 32, 64 and 128: the trainer's loss (``gamengen.diffusion.diffusion_loss``)
  under bf16 autocast, gradient clipping and the optimizer as ``train_text_to_image.py``. Samples/s, ms per
  step, forward+backward and optimizer ms apart, peak memory, FLOPs per step
  (``torch.utils.flop_counter.FlopCounterMode`` on one eager step: model FLOPs, forward and backward) and
  MFU = FLOPs / step time / the dense bf16 peak;
* ``train_sd14_variants``: the same at batch 64 with one default changed: channels-first weights,
  transformers' Adafactor (the paper's), torch's Adafactor;
* ``optimizer_sd14``: the optimizer phase alone (clipping, step, zero_grad) over sd14's parameters with
  random gradients, for each of the trainer's ``--optimizer`` choices (transformers' Adafactor, torch's
  multi-tensor Adafactor, AdamW, fused on a GPU) and AdamW's multi-tensor step: ms per step and peak memory;
* ``engine_sd14_eager`` / ``engine_sd14_reduce_overhead`` / ``engine_sd14_compile``: ``GameEngine``
  frames at 320x256, context 64, 4 and 1 DDIM steps, CFG 1.5, bf16, SD v1.4's VAE (random weights),
  uncompiled, with CUDA graphs and with torch.compile's default mode: frames/s, UNet / decode / total ms per
  frame (the engine's own per-stage timing) and p50 / p99 frame latency;
* ``train_sd14_compile_blocks``: the GPU defaults at batch 64 with ``--compile_blocks`` (each UNet block
  compiled; the compilation is the warm-up);
* ``train_tiny``: the tiny preset's training samples/s (AdamW, fp32 and bf16 autocast).

Timing: warm-up iterations (compilation included) are excluded, and ``torch.cuda.synchronize`` runs
before every clock read. ``--dry_run`` runs every part on the CPU with tiny-preset models in place of
sd14, 1-2 iterations each and ``torch.compile`` through the ``eager`` backend (graph capture without
code generation), all in this process: it tests the script, its numbers are no sd14 measurement.

Writes ``DIR/device_check.json`` and ``DIR/device_check.md`` (a dry run: ``device_check_dry_run.*``, so
it never replaces a GPU result), rewritten after every part: an interrupted run keeps what it measured.
DIR defaults to ``$OUT`` when set, else ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gamengen.files import write_bytes_atomic, write_json_atomic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_measures, device_report

from device_measures import (  # noqa: E402
    ENGINE_DDIM_STEPS,
    MIN_PART_SECONDS,
    OPTIMIZERS,
    NotMeasured,
    bf16_peak,
    compute_device,
    engine_bundle,
    error_text,
    guarded,
    measure_engine,
    measure_matmul,
    measure_optimizer,
    measure_training,
    model_label,
    sd14_stand_in,
)
from device_report import outcome, render_markdown, summary_line  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry_run", action="store_true", help="CPU, tiny models, 1-2 iterations: tests the script")
    parser.add_argument("--output_dir", default=None, help="default: $OUT, else benchmarks/results")
    parser.add_argument("--parts", default=",".join(PART_NAMES), help="comma-separated parts to run, in this order")
    parser.add_argument(
        "--part_timeout", action="append", default=[], metavar="NAME=SECONDS", help="a part's time bound (repeatable)"
    )
    parser.add_argument(
        "--time_budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the parts together stop within this: each part's bound shrinks to what is left, and a part with less "
        f"than {MIN_PART_SECONDS:g} s left is not run (default: no budget, each part its own bound)",
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each part in its own process under its time bound (default: yes, except in a dry run)",
    )
    parser.add_argument(
        "--train_batch_sizes", type=int, nargs="+", default=None, help="sd14 training batches (32 64 128)"
    )
    parser.add_argument(
        "--variant_batch_size", type=int, default=None, help="sd14 batch of the variants and compiled blocks (64)"
    )
    parser.add_argument("--engine_steps", type=int, nargs="+", default=None, help="DDIM steps of the engine (4 1)")
    parser.add_argument("--tiny_batch_sizes", type=int, nargs="+", default=None, help="tiny training batches (32)")
    parser.add_argument("--train_steps", type=int, default=None, help="measured training steps per configuration (10)")
    parser.add_argument("--engine_frames", type=int, default=None, help="measured frames per engine mode (100)")
    parser.add_argument("--compile_backend", default=None, help="torch.compile backend (inductor; a dry run: eager)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak for MFU (default: known GPUs)")
    results = parser.add_argument_group("CUDA test results (passed by device_check.sh)")
    results.add_argument("--pytest_log", default=None, help="output of pytest -m cuda")
    results.add_argument("--pytest_status", type=int, default=None, help="its exit status (124: timed out)")
    results.add_argument("--pytest_timeout", type=float, default=None, help="its time bound in seconds")
    parser.add_argument("--run_part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part_output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    dry = args.dry_run
    defaults = {
        "train_batch_sizes": [2, 4] if dry else [32, 64, 128],
        "variant_batch_size": 2 if dry else 64,
        "engine_steps": list(ENGINE_DDIM_STEPS),
        "tiny_batch_sizes": [4] if dry else [32],
        "train_steps": 1 if dry else 10,
        "engine_frames": 2 if dry else 100,
        "compile_backend": "eager" if dry else "inductor",
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.isolate is None:
        args.isolate = not dry
    sizes = args.train_batch_sizes + args.tiny_batch_sizes + args.engine_steps
    if min([*sizes, args.variant_batch_size, args.train_steps, args.engine_frames]) < 1:
        parser.error("batch sizes, --train_steps and --engine_frames must be >= 1")
    args.parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in args.parts + ([args.run_part] if args.run_part else []) if name not in PART_NAMES]
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose from {', '.join(PART_NAMES)}")
    args.timeouts = {part.name: part.timeout_s for part in PARTS}
    for item in args.part_timeout:
        name, _, seconds = item.partition("=")
        if name not in args.timeouts:
            parser.error(f"--part_timeout {item}: unknown part {name!r} (choose from {', '.join(PART_NAMES)})")
        try:
            args.timeouts[name] = float(seconds)
        except ValueError:
            parser.error(f"--part_timeout {item}: SECONDS must be a number")
    if args.time_budget is not None and args.time_budget < 0:
        parser.error("--time_budget must be >= 0 seconds")
    if args.output_dir is None:
        args.output_dir = os.environ.get("OUT") or str(REPO / "benchmarks" / "results")
    return args


# ----------------------------------------------------------------------------------------------
# Parts: each yields (key, measurement) pairs; key None: the measurement is the part's whole result.


def part_device(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "dry_run": options.dry_run,
    }
    for package in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # recorded; the parts that need it record their own error
            info[package] = "not installed"
    device = torch.device("cpu")
    if options.dry_run or not torch.cuda.is_available():
        info["name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        info["cuda"] = "not measured: no CUDA device used" + (" (dry run)" if options.dry_run else "")
        info["bf16_matmul_tflops"] = "not measured: CPU"
    else:
        device = torch.device("cuda")
        properties = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=properties.total_memory / 2**30,
            multiprocessors=properties.multi_processor_count,
        )
        matmul = guarded(lambda: {"tflops": measure_matmul(device)}, device)
        info["bf16_matmul_tflops"] = matmul.get("tflops", f"not measured: {outcome(matmul)}")
    peak, source = bf16_peak(options, device)
    info["bf16_peak_tflops"] = peak if peak else f"not measured: {source}"
    info["bf16_peak_source"] = source
    yield None, info


# The sd14 trainer's GPU defaults (train_text_to_image.py, gamengen/config.py): fused AdamW, channels-last weights;
# each variant changes one of them (or compiles the UNet's blocks). lr 2e-5 and bf16 autocast throughout.
TRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {"optimizer_name": "adamw", "channels_last": True},
    "channels_first": {"optimizer_name": "adamw", "channels_last": False},
    "adafactor": {"optimizer_name": "adafactor", "channels_last": True},
    "adafactor_torch": {"optimizer_name": "adafactor_torch", "channels_last": True},
    "compile_blocks": {"optimizer_name": "adamw", "channels_last": True, "compiled": True},
}


def part_train_sd14(
    variants: list[str], batches: Callable[[argparse.Namespace], list[int]]
) -> Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]:
    """The sd14 training step of each variant at each of its batches: keys ``variant/batch_<b>``."""

    def run(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
        device = compute_device(options)
        preset, label = sd14_stand_in(options), model_label(options)
        for variant in variants:
            settings = dict(TRAIN_VARIANTS[variant])
            optimizer_name = settings.pop("optimizer_name")
            for batch_size in batches(options):
                arguments = (options, preset, label, batch_size, optimizer_name, 2e-5, True, device)
                yield f"{variant}/batch_{batch_size}", guarded(measure_training, device, *arguments, **settings)

    return run


def part_optimizer_sd14(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    device = compute_device(options)
    for name in OPTIMIZERS:
        yield name, guarded(measure_optimizer, device, options, name, device)


def part_engine(compiled: bool, mode: str | None) -> Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]:
    """The engine at each of ``--engine_steps`` DDIM steps, one bundle for all: keys ``steps_<n>``."""

    def run(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
        import torch

        if compiled:
            torch._dynamo.reset()
        bundle = engine_bundle(options)
        for steps in options.engine_steps:
            yield f"steps_{steps}", measure_engine(options, bundle, compiled, mode, steps)

    return run


def part_train_tiny(options: argparse.Namespace) -> Iterator[tuple[str | None, Any]]:
    device = compute_device(options)
    # The tiny trainer's settings (train_text_to_image.py): AdamW lr 5e-4, residual, action positions and class.
    tiny = {"residual": True, "action_positions": True, "action_class": True}
    for batch_size in options.tiny_batch_sizes:
        for name, bf16 in (("fp32", False), ("bf16", True)):
            settings = ("tiny", "tiny preset", batch_size, "adamw", 5e-4, bf16, device)
            yield f"batch_{batch_size}_{name}", guarded(measure_training, device, options, *settings, **tiny)


@dataclass(frozen=True)
class Part:
    name: str
    section: str  # top-level key of the report
    key: str | None  # key inside the section (None: the part's result is the whole section)
    run: Callable[[argparse.Namespace], Iterator[tuple[str | None, Any]]]
    timeout_s: float  # default time bound on a GPU machine (see PARTS)

    def expected_keys(self, options: argparse.Namespace) -> list[str | None]:
        if self.name == "train_sd14":
            return [f"defaults/batch_{b}" for b in options.train_batch_sizes]
        if self.name == "train_sd14_variants":
            return [f"{variant}/batch_{options.variant_batch_size}" for variant in VARIANTS_COMPARED]
        if self.name == "train_sd14_compile_blocks":
            return [f"compile_blocks/batch_{options.variant_batch_size}"]
        if self.name == "optimizer_sd14":
            return list(OPTIMIZERS)
        if self.name == "train_tiny":
            return [f"batch_{b}_{dtype}" for b in options.tiny_batch_sizes for dtype in ("fp32", "bf16")]
        if self.name.startswith("engine_"):
            return [f"steps_{steps}" for steps in options.engine_steps]
        return [None]


VARIANTS_COMPARED = ["channels_first", "adafactor", "adafactor_torch"]  # each against the defaults at its batch

# What the trainer's defaults rest on first (training at its defaults and the one-change variants, the optimizers),
# then the engine (CUDA graphs are what it plays with on a GPU), the compiled blocks, the tiny preset, and last
# torch.compile's default mode (measured: between eager and CUDA graphs). The bounds are sized from the H200 runs
# (docs/gpu.md): a part's start (imports, CUDA, building sd14 on the GPU) took 10-30 s, a batch-128 step 0.37 s,
# the engine's CUDA-graph warm-up 63 s. Together they exceed one device call: --time_budget (device_check.sh
# passes one) cuts the last parts short rather than the whole run.
PARTS = [
    Part("device", "device", None, part_device, 30),
    Part("train_sd14", "train_sd14", None, part_train_sd14(["defaults"], lambda o: o.train_batch_sizes), 110),
    Part(
        "train_sd14_variants",
        "train_sd14",
        None,
        part_train_sd14(VARIANTS_COMPARED, lambda o: [o.variant_batch_size]),
        110,
    ),
    Part("optimizer_sd14", "optimizer_sd14", None, part_optimizer_sd14, 60),
    Part("engine_sd14_eager", "engine_sd14", "eager", part_engine(False, None), 60),
    Part("engine_sd14_reduce_overhead", "engine_sd14", "reduce-overhead", part_engine(True, "reduce-overhead"), 150),
    Part(
        "train_sd14_compile_blocks",
        "train_sd14",
        None,
        part_train_sd14(["compile_blocks"], lambda o: [o.variant_batch_size]),
        180,
    ),
    Part("train_tiny", "train_tiny", None, part_train_tiny, 40),
    Part("engine_sd14_compile", "engine_sd14", "compile", part_engine(True, None), 150),
]
PART_NAMES = [part.name for part in PARTS]


# ----------------------------------------------------------------------------------------------
# Running the parts


def collect(part: Part, options: argparse.Namespace, on_update: Callable[[dict], None]) -> tuple[dict[Any, Any], str]:
    """Run a part here: ({key: measurement}, status). A failure ends the part; what it measured stays."""
    values: dict[Any, Any] = {}
    try:
        for key, value in part.run(options):
            values[key] = value
            print(f"[{part.name}] {key or 'result'}: {summary_line(value)}", flush=True)
            on_update(values)
        return values, "ok"
    except NotMeasured as reason:
        return values, f"not measured: {reason}"
    except Exception as error:
        traceback.print_exc()
        return values, f"error: {error_text(error)}"


def run_isolated(part: Part, options: argparse.Namespace, timeout: float) -> tuple[dict[Any, Any], str]:
    """Run a part in a child process (its own process group) and kill the group when its time is up."""
    import json

    with tempfile.TemporaryDirectory(prefix="device_check_") as folder:
        output = Path(folder) / f"{part.name}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--run_part", part.name, "--part_output", str(output)]
        command += forwarded_options(options)
        process = subprocess.Popen(command, start_new_session=True)
        timed_out = False
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        if timed_out:  # the compile workers of the part go with it
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        found = json.loads(output.read_text()) if output.is_file() else {"values": [], "status": None}
    values = {key: value for key, value in found["values"]}
    if timed_out:
        return values, f"not measured: timed out after {timeout:g} s"
    if found["status"] is None:
        return values, f"error: the part's process exited with status {code} before finishing (see the log)"
    return values, found["status"]


def forwarded_options(options: argparse.Namespace) -> list[str]:
    arguments = ["--dry_run"] if options.dry_run else []
    arguments += ["--train_batch_sizes", *map(str, options.train_batch_sizes)]
    arguments += ["--variant_batch_size", str(options.variant_batch_size)]
    arguments += ["--engine_steps", *map(str, options.engine_steps)]
    arguments += ["--tiny_batch_sizes", *map(str, options.tiny_batch_sizes)]
    arguments += ["--train_steps", str(options.train_steps), "--engine_frames", str(options.engine_frames)]
    arguments += ["--compile_backend", options.compile_backend]
    if options.peak_tflops is not None:
        arguments += ["--peak_tflops", str(options.peak_tflops)]
    return arguments


def run_child(options: argparse.Namespace) -> None:
    """``--run_part``: run one part, writing what it measured so far after every measurement."""
    part = next(p for p in PARTS if p.name == options.run_part)
    output = Path(options.part_output)

    def write(values: dict[Any, Any], status: str | None) -> None:
        write_json_atomic(output, {"values": [[key, value] for key, value in values.items()], "status": status})

    values, status = collect(part, options, lambda values: write(values, None))
    write(values, status)


def store(results: dict[str, Any], part: Part, options: argparse.Namespace, values: dict, status: str) -> None:
    """Put a part's measurements into the report; every expected one that is missing says why."""
    reason = status if status != "ok" else "error: the part ended without this measurement"
    if reason.startswith("error: "):
        missing = {"error": reason.removeprefix("error: ")}
    else:
        missing = {"not_measured": reason.removeprefix("not measured: ")}
    measurements = {key: values.get(key, missing) for key in part.expected_keys(options)}
    if all(key is not None and "/" in key for key in measurements):  # "variant/batch_b": nested in the section
        for key, measurement in measurements.items():
            outer, inner = key.split("/", 1)
            results.setdefault(part.section, {}).setdefault(outer, {})[inner] = measurement
        return
    section = measurements[None] if list(measurements) == [None] else measurements
    if part.key is None:
        results[part.section] = section
    else:
        results.setdefault(part.section, {})[part.key] = section


def cuda_test_results(options: argparse.Namespace) -> dict[str, Any]:
    """What ``pytest -m cuda -v`` reported (device_check.sh runs it and passes its log and exit status)."""
    if options.pytest_log is None:
        return {"not_measured": "pytest -m cuda runs from benchmarks/device_check.sh, not from this script"}
    log = Path(options.pytest_log)
    text = log.read_text(errors="replace") if log.is_file() else ""
    outcomes = dict(re.findall(r"^\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, re.MULTILINE))
    result: dict[str, Any] = {"tests": outcomes, "status": options.pytest_status}
    if options.pytest_timeout is not None:
        result["timeout_s"] = options.pytest_timeout
    if options.pytest_status in (124, 137):  # timeout(1)'s statuses: the bound ran out
        finished = len(outcomes)
        result["error"] = f"pytest -m cuda timed out after {options.pytest_timeout:g} s ({finished} tests finished)"
        return result
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b", line)
        if found:
            counts = {("error" if word.startswith("error") else word): int(number) for number, word in found}
            result.update({word: counts.get(word, 0) for word in ("passed", "failed", "skipped", "error")})
            result["summary"] = line.strip(" =")
            return result
    result["error"] = f"pytest -m cuda exited with status {options.pytest_status} and no result line (see the log)"
    return result


def run_all(options: argparse.Namespace) -> Path:
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = "device_check_dry_run" if options.dry_run else "device_check"
    json_path, markdown_path = output_dir / f"{stem}.json", output_dir / f"{stem}.md"
    results: dict[str, Any] = {
        "format_version": 1,
        "dry_run": options.dry_run,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "options": {k: v for k, v in vars(options).items() if k not in ("run_part", "part_output", "part_timeout")},
        "cuda_tests": cuda_test_results(options),
    }
    part_status = {}
    for part in PARTS:  # every section present from the start, in the parts' order
        status = "not measured: " + ("not run yet" if part.name in options.parts else "not selected (--parts)")
        store(results, part, options, {}, status)
        part_status[part.name] = {"status": status}
    results["parts"] = part_status

    def write() -> None:
        write_json_atomic(json_path, results)
        write_bytes_atomic(markdown_path, render_markdown(results))

    write()
    budget_started = time.perf_counter()
    for name in options.parts:
        part = next(p for p in PARTS if p.name == name)
        timeout = options.timeouts[name]
        if options.time_budget is not None:
            left = options.time_budget - (time.perf_counter() - budget_started)
            if left < MIN_PART_SECONDS:
                status = f"not measured: the --time_budget of {options.time_budget:g} s was used up"
                store(results, part, options, {}, status)
                results["parts"][name] = {"status": status}
                write()
                print(f"== {name}: {status}", flush=True)
                continue
            timeout = min(timeout, round(left, 1))
        print(f"== {name}" + (f" (bound {timeout:g} s)" if options.isolate else " (in this process)"), flush=True)
        started = time.perf_counter()
        if options.isolate:
            values, status = run_isolated(part, options, timeout)
        else:
            values, status = collect(part, options, lambda values: None)
        store(results, part, options, values, status)
        results["parts"][name] = {"status": status, "seconds": time.perf_counter() - started}
        if options.isolate:
            results["parts"][name]["timeout_s"] = timeout
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write()
        print(f"== {name}: {status} in {results['parts'][name]['seconds']:.1f} s", flush=True)
    print(markdown_path.read_text())
    print(f"-> {json_path}\n-> {markdown_path}")
    return json_path


def main() -> None:
    options = parse_args()
    if options.run_part:
        run_child(options)
    else:
        run_all(options)


if __name__ == "__main__":
    main()
