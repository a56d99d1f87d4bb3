"""The layer benchmark's arithmetic, and that it runs (tiny sizes; its timings are not checked)."""

import subprocess
import sys
from pathlib import Path

import pytest

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
