"""The prepared GPU check (benchmarks/device_check.sh and .py), run here as a dry run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO, run_script, script_env

TRAIN_NUMBERS = ("samples_per_s", "step_ms", "forward_backward_ms", "optimizer_ms", "flops_per_step")
ENGINE_NUMBERS = ("frames_per_s", "unet_ms", "decode_ms", "total_ms", "p50_ms", "p99_ms")


def load_device_check():
    """The script as a module (benchmarks/ is no package); registered first, as its dataclass needs."""
    if "device_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["device_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["device_check"]


def has_numbers(measurement: dict, keys: tuple[str, ...]) -> bool:
    return all(isinstance(measurement.get(key), int | float) and measurement[key] > 0 for key in keys)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, subprocess.CompletedProcess]:
    """``bash benchmarks/device_check.sh --dry_run`` as a user runs it (no wheel folder: diffusers is installed)."""
    out = tmp_path_factory.mktemp("device_check")
    no_wheels = tmp_path_factory.mktemp("no_wheels")
    env = script_env(PYTHON=sys.executable, DEVICE_CHECK_WHEELS=str(no_wheels), OMP_NUM_THREADS="1")
    command = ["bash", str(REPO / "benchmarks" / "device_check.sh"), "--dry_run", "--output_dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert (out / "device_check_dry_run.log").is_file(), "the script's log was not written"
    assert not (out / "device_check.json").exists(), "a dry run must not write (and so replace) the GPU result file"
    results = json.loads((out / "device_check_dry_run.json").read_text())
    return results, (out / "device_check_dry_run.md").read_text(), result


@pytest.mark.slow
def test_dry_run_measures_every_section_and_names_the_device(dry_run):
    results, markdown, _ = dry_run
    assert results["dry_run"] is True
    assert all(part["status"] == "ok" for part in results["parts"].values()), results["parts"]

    device = results["device"]
    assert device["name"].startswith("CPU") and device["torch"]
    assert device["bf16_peak_tflops"].startswith("not measured"), "a CPU has no bf16 peak: MFU must say so, not guess"

    # The trainer's GPU defaults at every batch, and each one-change variant (and the compiled blocks) beside them.
    training = results["train_sd14"]
    assert set(training) == {"defaults", "channels_first", "adafactor", "adafactor_torch", "compile_blocks"}
    assert set(training["defaults"]) == {"batch_2", "batch_4"}
    for variant, measurements in training.items():
        for measurement in measurements.values():
            assert has_numbers(measurement, TRAIN_NUMBERS), (variant, measurement)
            assert measurement["mfu"].startswith("not measured"), measurement["mfu"]
    assert training["defaults"]["batch_2"]["layout"] == "channels-last"
    assert training["defaults"]["batch_2"]["optimizer"].startswith("adamw (not fused)")  # fused on a GPU only
    assert training["channels_first"]["batch_2"]["layout"] == "channels-first"
    assert training["adafactor"]["batch_2"]["optimizer"].startswith("adafactor (")
    assert training["compile_blocks"]["batch_2"]["compiled"] == "UNet blocks compiled (eager)"
    for mode in ("eager", "compile", "reduce-overhead"):
        for steps in (4, 1):
            measurement = results["engine_sd14"][mode][f"steps_{steps}"]
            assert has_numbers(measurement, ENGINE_NUMBERS), measurement
            assert measurement["guidance_scale"] == 1.5 and measurement["num_inference_steps"] == steps
            assert measurement["dtype"] == "bfloat16"
    for key in ("batch_4_fp32", "batch_4_bf16"):
        assert has_numbers(results["train_tiny"][key], TRAIN_NUMBERS), results["train_tiny"][key]
    optimizers = results["optimizer_sd14"]  # each trainer optimizer's step alone, same parameters
    assert set(optimizers) == {"adafactor", "adafactor_torch", "adamw", "adamw_foreach"}
    for measurement in optimizers.values():
        assert has_numbers(measurement, ("optimizer_ms", "tensors", "parameters_millions")), measurement
    assert len({m["parameters_millions"] for m in optimizers.values()}) == 1

    tests = results["cuda_tests"]  # no GPU here: every CUDA test is collected and skipped, none fails
    assert tests["failed"] == 0 and tests["error"] == 0
    assert tests["passed"] + tests["skipped"] == len(tests["tests"]) >= 4, tests

    assert f"# Device check: {device['name']}" in markdown
    assert "Dry run on the CPU" in markdown
    headings = ("CUDA tests", "## Training step: sd14", "## Optimizer phase alone", "## Engine: sd14", "## Parts")
    for heading in (*headings, "## Training step: tiny"):
        assert heading in markdown, heading
    rows = ("| defaults | 2 |", "| defaults | 4 |", "| channels_first | 2 |", "| compile_blocks | 2 |")
    rows += ("| eager | 4 |", "| reduce-overhead | 1 |", "| compile | 4 |", "| batch 4 bf16 |")
    rows += ("| adafactor_torch |", "| adamw_foreach |", "| optimizer_sd14 | ok", "| train_sd14_compile_blocks | ok")
    for row in rows:
        assert row in markdown, row


def isolated_dry_run(out, *options: str) -> tuple[dict, str]:
    """device_check.py's dry run of train_tiny then device, each part in its own process: (results, markdown)."""
    run_script(
        "benchmarks/device_check.py",
        *("--dry_run", "--isolate", "--parts", "train_tiny,device", *options, "--output_dir", out),
        timeout=300,
        OMP_NUM_THREADS="1",
    )
    return json.loads((out / "device_check_dry_run.json").read_text()), (out / "device_check_dry_run.md").read_text()


def test_a_part_that_runs_out_of_time_is_recorded_and_the_others_still_run(tmp_path):
    results, markdown = isolated_dry_run(tmp_path, "--part_timeout", "train_tiny=0.5")
    assert results["parts"]["train_tiny"]["status"] == "not measured: timed out after 0.5 s"
    assert results["train_tiny"]["batch_4_fp32"] == {"not_measured": "timed out after 0.5 s"}
    assert results["parts"]["device"]["status"] == "ok" and results["device"]["name"] in markdown
    assert results["engine_sd14"]["eager"]["steps_1"] == {"not_measured": "not selected (--parts)"}
    assert "| train_tiny | not measured: timed out after 0.5 s |" in markdown


def test_a_time_budget_shortens_a_part_and_skips_the_parts_that_no_longer_fit(tmp_path):
    # 10.6 s in all: train_tiny's bound of 60 s shrinks to 10.6; whether it finishes or not, less than the
    # 10 s a part needs is left for the device part, which is recorded as not measured, not started late.
    results, markdown = isolated_dry_run(tmp_path, "--part_timeout", "train_tiny=60", "--time_budget", "10.6")
    assert results["parts"]["train_tiny"]["timeout_s"] == 10.6
    used_up = "not measured: the --time_budget of 10.6 s was used up"
    assert results["parts"]["device"] == {"status": used_up}
    assert results["device"] == {"not_measured": used_up.removeprefix("not measured: ")}
    assert f"| device | {used_up} |" in markdown


def test_a_failed_measurement_shows_its_error_in_the_report():
    device_check = load_device_check()
    results = {
        "device": {"name": "NVIDIA H100 80GB HBM3", "bf16_peak_tflops": 989.0, "bf16_peak_source": "H100 SXM sheet"},
        "cuda_tests": {"not_measured": "not run"},
        "train_sd14": {"defaults": {"batch_128": {"error": "OutOfMemoryError: CUDA out of memory"}}},
        "engine_sd14": {"compile": {"steps_4": {"not_measured": "timed out after 70 s"}}},
        "train_tiny": {},
        "parts": {},
    }
    markdown = device_check.render_markdown(results)
    assert "# Device check: NVIDIA H100 80GB HBM3" in markdown
    assert "| 989 (H100 SXM sheet) |" in markdown
    assert "| defaults | 128 | error: OutOfMemoryError: CUDA out of memory |" in markdown
    assert "| compile | 4 | not measured: timed out after 70 s |" in markdown


def test_cuda_test_results_are_read_from_the_pytest_log(tmp_path):
    device_check = load_device_check()
    log = tmp_path / "pytest.log"
    log.write_text(
        "tests/test_cuda.py::test_reduced_precision_frames_are_close_to_fp32_ones[bf16] PASSED [ 25%]\n"
        "tests/test_cuda.py::test_compiled_engine_gives_the_eager_frames FAILED [ 50%]\n"
        "=========== 1 failed, 1 passed in 12.3s ===========\n"
    )
    options = device_check.parse_args(["--pytest_log", str(log), "--pytest_status", "1", "--pytest_timeout", "90"])
    result = device_check.cuda_test_results(options)
    assert (result["passed"], result["failed"], result["summary"]) == (1, 1, "1 failed, 1 passed in 12.3s")
    assert result["tests"]["test_compiled_engine_gives_the_eager_frames"] == "FAILED"
    options = device_check.parse_args(["--pytest_log", str(log), "--pytest_status", "124", "--pytest_timeout", "90"])
    assert device_check.cuda_test_results(options)["error"] == "pytest -m cuda timed out after 90 s (2 tests finished)"


def test_an_unknown_part_is_refused_with_the_known_ones(capsys):
    device_check = load_device_check()
    with pytest.raises(SystemExit):
        device_check.parse_args(["--parts", "engine"])
    assert "unknown part(s) ['engine']: choose from device, train_sd14, train_sd14_variants" in capsys.readouterr().err
