"""lightning_drama.media: the dream of a world model as video frames and a labelled figure; the
callback's files on a tiny run with the debug config's settings."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lightning_drama.data import DramaDataModule
from lightning_drama.media import (
    ROW_LABELS,
    Dream,
    DreamMedia,
    dream_figure,
    dream_frames,
    dream_grid,
    render,
)
from lightning_drama.module import DramaModule
from lightning_drama.world_model import WorldModel

ROOT = Path(__file__).resolve().parent.parent
DEBUG = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
DEBUG_MEDIA = next(
    callback["init_args"]
    for callback in DEBUG["trainer"]["callbacks"]
    if callback["class_path"] == "lightning_drama.media.DreamMedia"
)


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


def figure_size(n: int, length: int, frame: int = 64) -> tuple[int, int]:
    """(width, height) in pixels of `dream_figure` at 100 dpi: the frames one pixel each, plus
    1.1 + 0.15 inches of row labels and margin, and 0.4 + 0.3 inches of title and caption, and
    0.25 + 0.45 inches of reward and step labels per window."""
    return round(125 + length * frame), round(70 + n * 70 + n * 3 * frame)


def known_dream() -> Dream:
    """Two windows of 6 steps, 2 observed: random frames, rewards chosen to be read back."""
    rng = np.random.default_rng(0)
    n, length, context = 2, 6, 2
    reward = np.zeros((n, length))
    reward[0, 1], reward[0, 4] = 1.0, -1.0
    return Dream(
        real=rng.integers(0, 256, (n, length, 64, 64, 3), dtype=np.uint8),
        recon=rng.integers(0, 256, (n, length, 64, 64, 3), dtype=np.uint8),
        imagined=rng.integers(0, 256, (n, length - context, 64, 64, 3), dtype=np.uint8),
        predicted_reward=np.array([[0.5, -1.0, -0.001, 2.0], [0.0, 0.25, 0.0, 0.0]]),
        reward=reward,
        context=context,
    )


def test_dream_figure_labels_rows_steps_and_rewards():
    d = known_dream()
    fig = dream_figure(d, "after 100 env steps")
    assert fig.get_suptitle() == "after 100 env steps"
    first, second = fig.axes  # one panel per window
    for ax in (first, second):
        assert tuple(label.get_text() for label in ax.get_yticklabels()) == ROW_LABELS
        assert ROW_LABELS == ("real", "reconstructed\n(posterior)", "imagined\n(prior)")
        # the context / imagination boundary: a red line between columns 1 and 2
        (boundary,) = [line for line in ax.lines if line.get_color() == "red"]
        np.testing.assert_array_equal(boundary.get_xdata(), [127.5, 127.5])
    assert [text.get_text() for text in first.texts] == [
        "observing",
        # below the imagined row: the step index, and the predicted reward r_{t-1} once dreaming
        "0", "1", "2\nr̂ +0.50", "3\nr̂ -1.00", "4\nr̂ +0.00", "5\nr̂ +2.00",
        # above the real row: the replay's reward of the same step, r_{t-1}
        "r +1.00", "r +0.00", "r +0.00", "r -1.00",
    ]  # fmt: skip
    below, above = first.texts[1], first.texts[7]
    assert below.get_position() == (31.5, 3 * 64 + 2)  # column 0, under the 3 rows
    assert above.get_position() == (2 * 64 + 31.5, -3)  # column 2, over the real row
    assert "3\nr̂ +0.25" in [text.get_text() for text in second.texts]
    caption = " ".join(text.get_text() for text in fig.texts)
    assert "2 observed" in caption and "4 imagined" in caption

    # Without the replay's rewards there is nothing above the frames.
    d.reward = None
    assert len(dream_figure(d).axes[0].texts) == 1 + 6


def test_dream_figure_renders_each_frame_at_its_own_pixels():
    d = known_dream()
    image = render(dream_figure(d, "title"))
    assert image.shape == (*figure_size(2, 6)[::-1], 3) and image.dtype == np.uint8

    def cell(window: int, row: int, t: int) -> np.ndarray:
        # 0.4 in title, 0.25 in reward labels, then 3 rows of 64 px; 0.7 in between windows
        top, left = 65 + window * (70 + 3 * 64) + row * 64, 110 + t * 64
        return image[top + 2 : top + 62, left + 2 : left + 62]  # inside the separating lines

    inner = np.s_[2:62, 2:62]
    np.testing.assert_array_equal(cell(0, 0, 0), d.real[0, 0][inner])
    np.testing.assert_array_equal(cell(1, 0, 5), d.real[1, 5][inner])
    np.testing.assert_array_equal(cell(0, 1, 3), d.recon[0, 3][inner])
    np.testing.assert_array_equal(cell(1, 2, 2), d.imagined[1, 0][inner])
    np.testing.assert_array_equal(cell(0, 2, 5), d.imagined[0, 3][inner])
    # nothing is imagined while the model observes: white, but for the word "observing"
    assert (cell(0, 2, 0)[:20] == 255).all()


def test_debug_config_ends_with_a_dream_picture():
    """configs/debug.yaml shows a dream when its run crosses a multiple of every_n_env_steps
    after the warm-up (DreamMedia's rule, run for real below); the last at the end of the run."""
    callback = DreamMedia(**DEBUG_MEDIA)
    every, data = callback.every_n_env_steps, DEBUG["data"]
    assert every > 0, "configs/debug.yaml: DreamMedia is off"
    shown = [
        s for s in range(data["warmup_steps"] + 1, data["total_env_steps"] + 1) if s % every == 0
    ]
    assert shown[-1] == data["total_env_steps"]
    assert len(shown) <= 2  # cheap: a few seconds of a run of about a minute
    # Windows from the training batch, no extra replay sampling (which would count for DFS).
    assert callback.context + callback.horizon <= data["seq_len"]


def test_dream_media_writes_gif_and_labelled_png(tmp_path):
    data = dict(DEBUG["data"], warmup_steps=32, total_env_steps=60, seq_len=16)
    data.update(imagine_batch=16, batch_size=4, eval_episodes=1, eval_max_steps=20)
    datamodule = DramaDataModule(**data)
    model = DramaModule(num_actions=datamodule.num_actions, **DEBUG["model"])
    # The debug config's callback, showing dreams every 20 env steps instead of 200.
    callback = DreamMedia(**dict(DEBUG_MEDIA, every_n_env_steps=20))
    length, n = callback.context + callback.horizon, callback.num_sequences
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
        callbacks=[callback],
    )
    trainer.fit(model, datamodule=datamodule)

    media = Path(trainer.log_dir) / "media"
    # After the 32-step warm-up the multiples 40 and 60 are crossed.
    assert sorted(p.name for p in media.iterdir()) == [
        "dream_40.gif", "dream_40.png", "dream_60.gif", "dream_60.png",
    ]  # fmt: skip
    with Image.open(media / "dream_60.gif") as gif:
        assert gif.n_frames == length and gif.size == (3 * 64, n * 64)
    with Image.open(media / "dream_60.png") as png:
        assert png.size == figure_size(n, length)  # the labelled figure, not the bare frames
        pixels = np.asarray(png.convert("RGB"))
    # the red boundary after the 4 observed steps, in every window's rows
    boundary = pixels[:, 110 + 4 * 64 - 1 : 110 + 4 * 64 + 1]
    red = (boundary[..., 0] > 200) & (boundary[..., 1] < 80) & (boundary[..., 2] < 80)
    assert red.any(axis=1).sum() > n * 3 * 64 // 3  # dashed
    assert (pixels[:, :100] < 100).any()  # dark text of the row labels in the left margin

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trainer.log_dir))
    events.Reload()
    images = events.Tags()["images"]
    assert images == ["dream/video"] or images == ["dream/grid"]
    logged = events.Images(images[0])
    assert [event.step for event in logged] == [40, 60]
    if images == ["dream/grid"]:  # without moviepy: the labelled figure
        assert (logged[-1].width, logged[-1].height) == figure_size(n, length)


def test_dream_media_off_and_bad_values():
    assert DreamMedia(every_n_env_steps=0).every_n_env_steps == 0
    with pytest.raises(ValueError, match="every_n_env_steps"):
        DreamMedia(every_n_env_steps=-1)
    with pytest.raises(ValueError, match="horizon"):
        DreamMedia(horizon=0)
