"""lightning_drama.media: the dream strip of a world model; the callback's files on a tiny run."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lightning_drama.data import DramaDataModule
from lightning_drama.media import DreamMedia, dream_frames, dream_grid
from lightning_drama.module import DramaModule
from lightning_drama.world_model import WorldModel

ROOT = Path(__file__).resolve().parent.parent
DEBUG = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())


def tiny_world_model(num_actions: int = 3) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(num_actions, **DEBUG["model"]["world_model"])


def synthetic_window(n: int = 2, length: int = 10, num_actions: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    is_first = torch.zeros(n, length, dtype=torch.bool)
    is_first[:, 0] = True
    return {
        "obs": torch.randint(0, 256, (n, length, 64, 64, 3), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, num_actions, (n, length), generator=g),
        "reward": torch.zeros(n, length),
        "is_first": is_first,
    }


def test_dream_frames_layout():
    world_model = tiny_world_model()
    window = synthetic_window(n=2, length=10)
    frames = dream_frames(world_model, window, context=3, horizon=5)
    assert frames.shape == (8, 2 * 64, 3 * 64, 3) and frames.dtype == np.uint8
    assert world_model.training  # the mode is restored
    # First column: the real frames, untouched during the context.
    np.testing.assert_array_equal(frames[:3, 64:, :64], window["obs"][1, :3].numpy())
    # Third column: the reconstruction during the context, red-bordered dreams after it.
    np.testing.assert_array_equal(frames[:3, :, 128:], frames[:3, :, 64:128])
    np.testing.assert_array_equal(frames[3:, 0, 128:], np.broadcast_to([255, 0, 0], (5, 64, 3)))

    grid = dream_grid(frames, 64)
    assert grid.shape == (2 * 3 * 64, 8 * 64, 3)
    np.testing.assert_array_equal(grid[3 * 64 : 4 * 64, 64:128], frames[1, 64:, :64])

    # numpy windows (as the replay returns them) work too; a short window is an error.
    numpy_window = {key: value.numpy() for key, value in window.items()}
    assert dream_frames(world_model.eval(), numpy_window, 2, 2).shape == (4, 128, 192, 3)
    assert not world_model.training
    with pytest.raises(ValueError, match="context \\+ horizon"):
        dream_frames(world_model, window, context=6, horizon=6)


def test_dream_media_writes_gif_and_png(tmp_path):
    data = dict(DEBUG["data"], warmup_steps=32, total_env_steps=60, seq_len=16)
    data.update(imagine_batch=16, batch_size=4, eval_episodes=1, eval_max_steps=20)
    datamodule = DramaDataModule(**data)
    model = DramaModule(num_actions=datamodule.num_actions, **DEBUG["model"])
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=-1,
        val_check_interval=10_000,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=TensorBoardLogger(tmp_path, name="media", default_hp_metric=False),
        callbacks=[DreamMedia(every_n_env_steps=20, context=4, horizon=4, num_sequences=2)],
    )
    trainer.fit(model, datamodule=datamodule)

    media = Path(trainer.log_dir) / "media"
    # After the 32-step warm-up the multiples 40 and 60 are crossed.
    assert sorted(p.name for p in media.iterdir()) == [
        "dream_40.gif", "dream_40.png", "dream_60.gif", "dream_60.png",
    ]  # fmt: skip
    with Image.open(media / "dream_60.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (3 * 64, 2 * 64)
    with Image.open(media / "dream_60.png") as png:
        assert png.size == (8 * 64, 2 * 3 * 64)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trainer.log_dir))
    events.Reload()
    images = events.Tags()["images"]
    assert images == ["dream/video"] or images == ["dream/grid"]
    assert [event.step for event in events.Images(images[0])] == [40, 60]


def test_dream_media_off_and_bad_values():
    assert DreamMedia(every_n_env_steps=0).every_n_env_steps == 0
    with pytest.raises(ValueError, match="every_n_env_steps"):
        DreamMedia(every_n_env_steps=-1)
    with pytest.raises(ValueError, match="horizon"):
        DreamMedia(horizon=0)
