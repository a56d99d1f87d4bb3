"""The layer benchmark's arithmetic, and that it runs (tiny sizes; its timings are not checked)."""

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.wm_layers import layer_inputs, report  # noqa: E402
from lightning_drama.world_model import WorldModel  # noqa: E402


def test_layer_inputs_are_the_paper_models_conv_stack():
    layers = layer_inputs(WorldModel(6))
    names = [name for name, _, _ in layers]
    # 5 encoder convs, 5 decoder (transposed) convs, 5 + 5 BatchNorms at conv resolution (the
    # decoder's first is the BatchNorm2d over its Linear's 64 x 4 x 4 map, as the reference's).
    assert len(names) == 20
    assert "decoder BN+SiLU 64x4x4" in names
    assert names[0] == "encoder conv 3->16 at 64x64"
    assert names[1] == "encoder BN+SiLU 16x64x64"
    assert names[-1] == "decoder convT 16->3 at 64x64"
    assert "decoder BN+SiLU 16x64x64" in names
    assert layers[0][2] == (3, 64, 64)


def test_report_groups_and_bound(capsys):
    ms = 1e-3
    best = {
        ("encoder conv 3->16 at 64x64", "fp32"): 200 * ms,
        ("encoder conv 3->16 at 64x64", "bf16"): 100 * ms,
        ("encoder BN+SiLU 16x64x64", "fp32"): 100 * ms,
        ("encoder BN+SiLU 16x64x64", "bf16"): 100 * ms,
        ("whole world-model update", "fp32"): 400 * ms,
        ("whole world-model update", "bf16"): 300 * ms,
    }
    names = sorted({name for name, _ in best})
    speedups = report(best, names)
    assert speedups["convolutions"] == pytest.approx(2.0)
    assert speedups["BN+SiLU"] == pytest.approx(1.0)
    # layers: 300 ms fp32 -> 200 ms bf16; the other 100 ms of the update at 2x: 50 ms.
    assert speedups["bound"] == pytest.approx(400 / (200 + 50))
    # convs 200 -> 100 ms; everything else (100 ms BN+SiLU, 100 ms rest) at 2x: 100 ms.
    assert speedups["conv_bound"] == pytest.approx(400 / (100 + 100))
    out = capsys.readouterr().out
    assert "| whole world-model update | 400 | 300 | 1.33x |" in out
    assert "75% of the fp32 update" in out


def test_runs_at_tiny_size():
    result = subprocess.run(
        [sys.executable, "benchmarks/wm_layers.py", "--frames", "4", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 20 + 1 + 2  # header, layers, update, two group sums
    assert "the update's bf16 speed-up would be" in result.stdout


def test_cpu_description_names_the_bf16_instructions():
    from benchmarks.train_step import cpu_description

    amx = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n"
    )
    assert cpu_description(amx) == "Intel(R) Xeon(R) Processor, AVX512-BF16, AMX-BF16"
    # the first CPU's fields count; the second CPU repeats them
    epyc = (
        "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx512f avx512_bf16\n\nmodel name\t: other\n"
    )
    assert cpu_description(epyc) == "AMD EPYC 9B14, AVX512-BF16"
    assert cpu_description("") == "unknown CPU, no bf16 instructions"


def test_target_lines_say_met_or_not():
    from benchmarks.train_step import target_lines

    met = target_lines(0.45, 2.16)
    assert met[0].endswith("at 45% of the fp32 matmul rate (target >= 30%): met")
    assert met[1].endswith("2.16x (target >= 1.8x): met")
    missed = target_lines(0.29, 1.79)
    assert missed[0].endswith("NOT met") and missed[1].endswith("NOT met")
    assert len(target_lines(0.5, None)) == 1


def test_acting_benchmark_runs_both_modes_at_tiny_size():
    sys.path.insert(0, str(ROOT))
    from benchmarks.acting import main as acting

    medians = acting(["--tiny", "--repeats", "2"])
    assert set(medians) == {"reference", "posterior"} and all(t > 0 for t in medians.values())


def test_memory_benchmark_reports_every_setting_at_tiny_size():
    result = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--tiny", "--repeats", "1",
         "--settings", "off,keep,capped"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["off", "keep", "capped"]
    assert "GiB" in rows[1]


def test_malloc_tuning_modes(monkeypatch):
    from lightning_drama import allocator

    thresholds = []
    monkeypatch.setattr(
        allocator, "keep_freed_memory", lambda t=1 << 30: thresholds.append(t) or True
    )
    monkeypatch.setattr(allocator, "physical_memory", lambda: 24 << 30)
    assert allocator.tune_malloc() == "capped" and thresholds[-1] == 256 << 20
    monkeypatch.setattr(allocator, "physical_memory", lambda: 64 << 30)
    assert allocator.tune_malloc() == "keep" and thresholds[-1] == 1 << 30
    monkeypatch.setenv("DRAMA_MALLOC_TUNING", "capped")
    assert allocator.tune_malloc() == "capped"
    monkeypatch.setenv("DRAMA_MALLOC_TUNING", "0")
    assert allocator.tune_malloc() == "off" and len(thresholds) == 3
    with pytest.raises(ValueError, match="DRAMA_MALLOC_TUNING"):
        allocator.tune_malloc("lots")


def test_backbones_benchmark_times_all_four_at_tiny_size():
    from benchmarks.backbones import main as backbones

    result = backbones(["--tiny"])
    kinds = {"mamba2", "mamba", "transformer", "gru"}
    assert set(result["train"]) == kinds and set(result["step"]) == kinds
    assert all(t > 0 for per_length in result["lengths"].values() for t in per_length.values())


def test_gpu_check_arithmetic():
    from benchmarks.gpu_check import atari100k_projection, pytest_counts, targets

    atari = {"total_env_steps": 100_000, "warmup_steps": 1032, "env_steps_per_update": 1}
    projection = atari100k_projection(100.0, 2.0, atari)
    assert projection["updates"] == 98_968  # the warm-up's random steps take no update
    assert projection["hours"] == pytest.approx((98_968 * 100.0 + 1032 * 2.0) / 3.6e6)
    four = atari100k_projection(100.0, 2.0, {**atari, "env_steps_per_update": 4})
    assert four["updates"] == 24_742 and four["ms_per_env_step"] == 25.0

    parts = {"world_model": 10.0, "imagination": 12.0, "actor_critic": 9.0}
    verdicts = targets(
        {
            "atari100k": {"hours": 2.9, "ms_per_env_step": 104.0},
            "speed": {"split": {"parts_ms": parts}},
            "nan_check": {"bf16-mixed": {"finite": True}, "16-mixed": {"finite": None}},
        }
    )
    assert verdicts["atari100k_le_3h"]["verdict"] == "PASS"
    assert verdicts["atari100k_le_1.5h"]["verdict"] == "FAIL"
    assert verdicts["imagination_ac_le_2x_wm"]["value"] == pytest.approx(2.1)
    assert verdicts["imagination_ac_le_2x_wm"]["verdict"] == "FAIL"
    assert verdicts["no_nan_bf16-mixed"]["verdict"] == "PASS"
    assert verdicts["no_nan_16-mixed"]["verdict"] == "SKIP"
    assert targets({})["atari100k_le_3h"]["verdict"] == "SKIP"

    summary = "....s\n= 3 passed, 1 skipped, 9 deselected, 1 error in 2.10s =\n"
    assert pytest_counts(summary) == {"passed": 3, "skipped": 1, "deselected": 9, "errors": 1}
    assert pytest_counts("no summary") == {}


def test_gpu_check_split_times_each_part_and_restores_the_instances():
    from benchmarks.gpu_check import Splitter, Sync

    class Model:
        def __init__(self):
            self.world_model = SimpleNamespace(imagine=lambda: time.sleep(0.02))
            self.policy = lambda: time.sleep(0.005)  # an attribute, as DramaModule's

        def training_step(self):
            time.sleep(0.01)
            self.world_model.imagine()
            time.sleep(0.03)

    class DataModule:
        def on_before_batch_transfer(self):
            time.sleep(0.002)

        def transfer_batch_to_device(self):
            time.sleep(0.003)

        def collect(self, policy):
            policy()
            time.sleep(0.004)

    model, datamodule = Model(), DataModule()
    policy, imagine = model.policy, model.world_model.imagine
    splitter = Splitter(model, datamodule, Sync("cpu"))
    splitter.install()
    datamodule.on_before_batch_transfer()
    datamodule.transfer_batch_to_device()
    datamodule.collect(model.policy)
    model.training_step()
    splitter.end_update()
    splitter.remove()
    (record,) = splitter.records
    expected = {"replay_sample": 0.002, "to_device": 0.003, "acting": 0.005, "env_step": 0.004,
                "world_model": 0.01, "imagination": 0.02, "actor_critic": 0.03}  # fmt: skip
    for part, seconds in expected.items():
        assert seconds <= record[part] < seconds + 0.2, part
    assert model.policy is policy and model.world_model.imagine is imagine
    assert "training_step" not in vars(model) and not vars(datamodule)


def test_gpu_check_tiny_cpu_mode_reports_every_number(tmp_path):
    from benchmarks.gpu_check import PARTS

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--tiny",
         "--skip-tests", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["device_name"] and report["environment"]["torch"]
    assert report["kernels"]["install"] == {
        "installed": False,
        "reason": "no --wheels folder given",
    }
    assert "mamba_ssm" in report["kernels"] and "fused_scan_available" in report["kernels"]
    speed = report["speed"]
    assert speed["precision"] == "bf16-mixed" and speed["timed_updates"] >= 2
    run = speed["warmup_updates"] + 2 * speed["timed_updates"]
    for part in ("world_model", "actor_critic"):  # every update's loss, all finite
        losses = speed["losses"][part]
        assert losses["count"] == run and losses["finite"] and math.isfinite(losses["last"])

    plain = speed["unsynchronised"]
    assert len(plain["per_update_ms"]) == speed["timed_updates"]
    assert plain["ms_per_update"] == pytest.approx(
        sum(plain["per_update_ms"]) / len(plain["per_update_ms"])
    )
    assert plain["ms_per_env_step"] == plain["ms_per_update"] / speed["env_steps_per_update"]

    split = speed["split"]
    assert split["updates"] == speed["timed_updates"] == len(split["per_update_ms"])
    assert list(split["parts_ms"]) == list(PARTS)
    assert all(split["parts_ms"][part] > 0 for part in PARTS)
    total = split["ms_per_update"]
    assert total == pytest.approx(sum(split["per_update_ms"]) / split["updates"])
    assert split["parts_sum_ms"] == pytest.approx(sum(split["parts_ms"].values()))
    assert split["parts_sum_ms"] + split["other_ms"] == pytest.approx(total)
    # every part of the update is inside one of the timed parts, bar the loop's own overhead
    assert 0.7 * total <= split["parts_sum_ms"] <= total * 1.001

    assert speed["flops_per_update"] > 0 and speed["matmul_tflops"]["bfloat16"] > 0
    seconds = plain["ms_per_update"] / 1000
    assert speed["achieved_tflops"] == pytest.approx(speed["flops_per_update"] / seconds / 1e12)
    assert speed["fraction_of_bf16_matmul"] == pytest.approx(
        speed["achieved_tflops"] / speed["matmul_tflops"]["bfloat16"]
    )
    assert speed["peak_memory"]["gib"] > 0

    with open(ROOT / "configs" / "atari.yaml") as f:
        atari = yaml.safe_load(f)["data"]
    projection = report["atari100k"]
    updates = math.ceil(
        (atari["total_env_steps"] - atari["warmup_steps"]) / atari["env_steps_per_update"]
    )
    assert projection["updates"] == updates == 98_968
    assert projection["ms_per_update"] == plain["ms_per_update"]
    hours = (
        updates * plain["ms_per_update"] + atari["warmup_steps"] * speed["ms_per_warmup_step"]
    ) / 3.6e6
    assert projection["hours"] == pytest.approx(hours)

    verdicts = report["targets"]
    assert verdicts["atari100k_le_3h"]["verdict"] == ("PASS" if hours <= 3 else "FAIL")
    assert verdicts["atari100k_le_1.5h"]["verdict"] == ("PASS" if hours <= 1.5 else "FAIL")
    parts = split["parts_ms"]
    ratio = (parts["imagination"] + parts["actor_critic"]) / parts["world_model"]
    assert verdicts["imagination_ac_le_2x_wm"]["value"] == pytest.approx(ratio)
    assert verdicts["imagination_ac_le_2x_wm"]["verdict"] == ("PASS" if ratio <= 2 else "FAIL")
    assert verdicts["no_nan_bf16-mixed"]["verdict"] == "PASS"
    assert verdicts["no_nan_16-mixed"]["verdict"] == "SKIP"  # no fp16 AMP on a CPU

    markdown = (tmp_path / "gpu_check.md").read_text()
    rows = markdown.splitlines()
    assert rows[:2] == ["| check | result |", "|---|---|"]
    assert all(row.startswith("| ") and row.endswith(" |") for row in rows[2:])
    names = [row.split(" | ")[0][2:] for row in rows[2:]]
    for name in ("device", "versions", "mamba-ssm", "tests", "ms per env step", "- world model",
                 "- imagination", "- actor critic", "achieved TFLOP/s", "peak memory",
                 "projected Atari100k", "target atari100k_le_3h", "target imagination_ac_le_2x_wm",
                 "target no_nan_16-mixed"):  # fmt: skip
        assert name in names, name
    assert markdown in result.stdout  # printed at the end


def test_dmh_benchmark_trains_tests_and_tabulates_at_tiny_size(tmp_path, monkeypatch):
    """`benchmarks/dmh.py`: data made once, each algorithm trained for its budget and played in
    context, one row per run in results.json and the table."""
    from benchmarks import dmh

    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parent.parent / "configs" / "dmh" / "debug.yaml")
    argv = ["--envs", "darkroom", "--algorithms", "dmh", "ad", "--minutes", "0.05",
            "--tasks", "3", "--episodes", "6", "--eval-episodes", "2", "--config", config,
            "--data-dir", "data", "--out", "out", "--model-fields",
            'ad={"d_model": 16, "layers": 1, "heads": 2}',
            "--", "--data.n_test_tasks", "2"]  # fmt: skip
    assert dmh.main(argv) == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = record["results"]
    assert [r["algorithm"] for r in rows] == ["dmh", "ad"]
    for row in rows:
        assert row["steps"] > 0 and len(row["curve"]) == 2 and row["seconds_per_episode"] > 0
        assert row["first"] == row["curve"][0] and row["last"] == row["curve"][1]
    assert rows[0]["paper"] == 14.0 and rows[1]["paper"] == 13.0
    table = dmh.table(rows)
    assert "| darkroom | DM-H |" in table and "| darkroom | AD (Transformer) |" in table


def test_dmh_memory_benchmark_reports_a_step_and_a_clean_out_of_memory():
    """`benchmarks/dmh_memory.py`: a capped child either measures the step or reports running
    out of memory, never killing the caller."""
    from benchmarks import dmh_memory

    row = dmh_memory.one_step("dmh", 10)
    assert row["seconds"] > 0 and row["peak_mb"] > 0
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dmh_memory", "--lengths", "3000",
         "--algorithms", "dt", "--limit-gb", "1.5"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| 3000 | DT | out of memory (1.5 GB cap) | – |" in done.stdout


def test_dmh_online_benchmark_times_both_at_tiny_size(capsys):
    """`benchmarks/dmh_online.py`: a row per reported episode with both times and the ratios."""
    from benchmarks import dmh_online

    assert dmh_online.main(["--envs", "darkroom", "--episodes", "2", "--no-cache-steps", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| darkroom")]
    assert len(rows) == 2  # episodes 0 and 1 (the middle one is 1)
    cells = [cell.strip() for cell in rows[1].strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[5]) > 0
    assert np.isclose(float(cells[4]), float(cells[3]) / float(cells[2]), rtol=0.02, atol=0.01)
