"""Drama in PyTorch Lightning: `python main.py fit --config configs/atari.yaml`.

Subcommands: fit, validate, test; `python main.py fit --help` lists every option.
"""

from lightning_drama.cli import main

if __name__ == "__main__":
    main()
