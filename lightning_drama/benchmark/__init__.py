"""Benchmarks of many runs: games x seeds on Ray (`run`) and their aggregate report (`report`).

python -m lightning_drama.benchmark run --config atari.yaml --games atari26 --seeds 5
python -m lightning_drama.benchmark report runs/benchmark
"""
