"""Dream media: what the world model sees and imagines, as a labelled figure, a GIF and a video.

`dream` runs the world model over a few real replay windows and returns, per window and step,

    real o_t | reconstruction decoder(z_t), z_t ~ posterior(o_t) | imagined frame

For the first `context` steps the model observes. After that it dreams open loop (no further
frames, the real actions that followed): with the alignment of `world_model.py`,

    d_{C-1} = backbone(stem([z_t, a_t]) for t < C)     the context, in parallel
    for k = C..C+H-1:
        z_k ~ prior(d_{k-1});  frame k = decoder(z_k);  r_{k-1} = reward(d_{k-1})
        d_k = backbone.step(stem([z_k, a_k]))

`dream_figure` draws it as a labelled grid (the PNG): per window the rows real / reconstructed
(posterior) / imagined (prior), one column per time step, the context / imagination boundary
marked, the predicted reward r_{k-1} under each imagined frame and the replay's reward above the
real one. `dream_frames` lays it out as video frames (the GIF): the three columns side by side,
each dreamed frame with a red border and its predicted reward drawn in, the real frame next to it
with the true reward.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from lightning_drama.world_model import WorldModel

DREAM_BORDER = (255, 0, 0)  # RGB: marks frames the model imagined


@dataclass
class Dream:
    """What the world model made of N real replay windows of T = context + horizon steps."""

    real: np.ndarray  # [N, T, H, W, 3] uint8: the replay's frames o_t
    recon: np.ndarray  # [N, T, H, W, 3] uint8: decoder(z_t), z_t ~ posterior(o_t)
    imagined: np.ndarray  # [N, horizon, H, W, 3] uint8: frames k = C..T-1 from prior samples
    predicted_reward: np.ndarray  # [N, horizon] float: r_{k-1} = reward(d_{k-1}) into frame k
    reward: np.ndarray | None  # [N, T] float: the replay's rewards; None when not given
    context: int  # C: the steps the model observed before it dreamed

    @property
    def horizon(self) -> int:
        return self.imagined.shape[1]


def dream(
    world_model: WorldModel,
    window: Mapping[str, Any],
    context: int,
    horizon: int,
) -> Dream:
    """Reconstruct `context` real steps of each window and dream `horizon` more (module docstring).

    window: `obs` [N, L, H, W, 3] uint8, `action` [N, L] int, and optionally `is_first` [N, L]
    bool (row 0 is taken as an episode start when missing) and `reward` [N, L], as torch tensors
    or numpy arrays; L >= context + horizon, later rows are ignored. Runs in eval mode (BatchNorm
    running statistics, no dropout) without gradients and restores the mode.
    """
    if context < 1 or horizon < 1:
        raise ValueError(f"dream: context ({context}) and horizon ({horizon}) must be >= 1")
    length = context + horizon
    obs = torch.as_tensor(window["obs"])
    if obs.dim() != 5 or obs.shape[1] < length:
        raise ValueError(
            f"dream: obs must be [N, L, H, W, 3] with L >= context + horizon = {length}, "
            f"got {tuple(obs.shape)}; sample longer windows or shorten the dream"
        )
    device = next(world_model.parameters()).device
    obs = obs[:, :length].to(device)  # [N, T, H, W, 3] uint8
    action = torch.as_tensor(window["action"])[:, :length].to(device, torch.long)  # [N, T]
    if "is_first" in window:
        is_first = torch.as_tensor(window["is_first"])[:, :context].to(device, torch.bool)
    else:
        is_first = torch.zeros(obs.shape[0], context, dtype=torch.bool, device=device)
        is_first[:, 0] = True
    reward = window.get("reward")
    reward = None if reward is None else torch.as_tensor(reward)[:, :length].float().cpu().numpy()

    was_training = world_model.training
    world_model.eval()
    try:
        with torch.no_grad():
            z = world_model.sample(world_model.encode(obs))  # [N, T, latent]
            recon = _decode(world_model, z)  # [N, T, H, W, 3]
            x = world_model.sequence_input(z[:, :context], action[:, :context])  # [N, C, D]
            d_ctx, state = world_model.backbone(x, reset=is_first)  # [N, C, D]
            d = d_ctx[:, -1]  # d_{C-1}
            dreamed, predicted = [], []
            for k in range(context, length):
                z_k = world_model.sample(world_model.prior_logits(d))  # [N, latent]
                dreamed.append(_decode(world_model, z_k))  # [N, H, W, 3]
                predicted.append(world_model.predict_reward(d).float().cpu())  # r_{k-1}: [N]
                if k + 1 < length:
                    x = world_model.sequence_input(z_k, action[:, k])
                    d, state = world_model.backbone.step(x, state)  # d_k
    finally:
        world_model.train(was_training)
    return Dream(
        real=obs.cpu().numpy(),
        recon=recon,
        imagined=np.stack(dreamed, 1),
        predicted_reward=torch.stack(predicted, 1).numpy(),
        reward=reward,
        context=context,
    )


def dream_frames(
    world_model: WorldModel,
    window: Mapping[str, Any],
    context: int,
    horizon: int,
) -> np.ndarray:
    """Real | reconstructed | imagined frames of real replay windows, as video frames.

    The window is as for `dream`. Returns uint8 frames [T, N * H, 3 * W, 3] with
    T = context + horizon (see `video_frames`).
    """
    return video_frames(dream(world_model, window, context, horizon))


def video_frames(dream: Dream) -> np.ndarray:
    """A dream as uint8 video frames [T, N * H, 3 * W, 3]: one band of height H per window,
    columns real | reconstruction | imagined. During the context the imagined column repeats the
    reconstruction; after it each dreamed frame gets a red border and its predicted reward, the
    real frame next to it the true one."""
    context, horizon = dream.context, dream.horizon
    real = dream.real.copy()
    imagined = np.concatenate([dream.recon[:, :context], dream.imagined], 1)  # [N, T, H, W, 3]
    for n in range(real.shape[0]):
        for k in range(horizon):
            t = context + k
            imagined[n, t] = _annotate(imagined[n, t], dream.predicted_reward[n, k], DREAM_BORDER)
            if dream.reward is not None:
                real[n, t] = _annotate(real[n, t], float(dream.reward[n, t - 1]), None)
    strip = np.concatenate([real, dream.recon, imagined], 3)  # [N, T, H, 3W, 3]
    length = context + horizon
    return np.ascontiguousarray(
        strip.transpose(1, 0, 2, 3, 4).reshape(length, -1, *strip.shape[3:])
    )


ROW_LABELS = ("real", "reconstructed\n(posterior)", "imagined\n(prior)")
# Margins of `dream_figure` in inches: row labels on the left; above each panel the replay's
# rewards, below it the step index and the predicted reward; the title; the caption.
_LEFT, _RIGHT, _ABOVE, _BELOW, _TITLE, _CAPTION = 1.1, 0.15, 0.25, 0.45, 0.4, 0.3


def dream_figure(dream: Dream, title: str | None = None, dpi: int = 100) -> Figure:
    """A dream as a labelled grid, one panel per window (see the module docstring).

    Per panel: rows `ROW_LABELS`; one column per time step t (bottom labels); a red dashed line
    between the observed context and the imagination; under each imagined frame its predicted
    reward `r̂`, above each real frame after the context the replay's reward `r` of the same
    step. The frames are drawn at one figure pixel per image pixel at `dpi`.
    """
    n, length, h, w, _ = dream.real.shape
    context = dream.context
    blank = np.full((n, context, h, w, 3), 255, np.uint8)  # nothing imagined while observing
    imagined = np.concatenate([blank, dream.imagined], 1)  # [N, T, H, W, 3]
    rows = np.stack([dream.real, dream.recon, imagined], 1)  # [N, 3, T, H, W, 3]
    bands = rows.transpose(0, 1, 3, 2, 4, 5).reshape(n, 3 * h, length * w, 3)  # [N, 3H, TW, 3]

    # This runs during training: a fixed layout (a layout engine about doubles the drawing time)
    # and one image per window, not an Axes per frame, keep it cheap.
    image_width, image_height = length * w / dpi, 3 * h / dpi  # inches
    panel = _ABOVE + image_height + _BELOW
    width, height = _LEFT + image_width + _RIGHT, _TITLE + n * panel + _CAPTION
    fig = Figure(figsize=(width, height), dpi=dpi)
    centres = np.arange(length) * w + (w - 1) / 2
    for i, band in enumerate(bands):
        bottom = height - _TITLE - i * panel - _ABOVE - image_height
        ax = fig.add_axes(
            (_LEFT / width, bottom / height, image_width / width, image_height / height)
        )
        ax.imshow(band, interpolation="nearest")
        ax.vlines(np.arange(1, length) * w - 0.5, -0.5, 3 * h - 0.5, color="white", lw=0.5)
        ax.hlines(np.arange(1, 3) * h - 0.5, -0.5, length * w - 0.5, color="white", lw=0.5)
        ax.axvline(context * w - 0.5, color="red", linestyle="--", linewidth=1.2)
        ax.text(
            (context * w - 1) / 2, 2.5 * h, "observing", ha="center", va="center",
            fontsize=8, color="gray",
        )  # fmt: skip
        ax.set_yticks(np.arange(3) * h + (h - 1) / 2, ROW_LABELS, fontsize=8)
        ax.set_xticks([])
        ax.tick_params(length=0)
        # Column labels as plain texts: tick labels (and a secondary axis above) draw slower.
        below = [
            f"{t}" if t < context else f"{t}\nr̂ {_signed(dream.predicted_reward[i, t - context])}"
            for t in range(length)
        ]
        for x, label in zip(centres, below, strict=True):
            ax.text(x, 3 * h + 2, label, ha="center", va="top", fontsize=7, linespacing=1.3)
        if dream.reward is not None:
            for t in range(context, length):
                label = f"r {_signed(dream.reward[i, t - 1])}"
                ax.text(centres[t], -3, label, ha="center", va="bottom", fontsize=7)
    fig.text(
        0.5,
        0.1 / height,
        f"time step t: {context} observed (real frames in), then {dream.horizon} imagined with the "
        "real actions; r̂ predicted reward into step t, r the replay's",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    if title is not None:
        fig.suptitle(title, y=1 - 0.15 / height, va="top", fontsize=10)
    return fig


def render(fig: Figure) -> np.ndarray:
    """A figure as an RGB image [H, W, 3] uint8, with Agg (no display, no pyplot)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def dream_grid(frames: np.ndarray, frame_size: int) -> np.ndarray:
    """Video frames [T, N * H, 3 * W, 3] -> one image [N * 3 * H, T * W, 3]: time runs left to
    right; per window three rows, real / reconstruction / imagined (H = W = frame_size)."""
    length, height, width, _ = frames.shape
    n, h, w = height // frame_size, frame_size, width // 3
    grid = frames.reshape(length, n, h, 3, w, 3).transpose(1, 3, 2, 0, 4, 5)  # [N, 3, H, T, W, 3]
    return np.ascontiguousarray(grid.reshape(n * 3 * h, length * w, 3))


def save_gif(frames: np.ndarray, path: str | Path, fps: int) -> None:
    """uint8 frames [T, H, W, 3] -> an endlessly looping GIF."""
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )


class DreamMedia(pl.Callback):
    """Every `every_n_env_steps` env steps, show what the world model reconstructs and dreams.

    Takes `num_sequences` windows of `context + horizon` rows from the current training batch
    (when its windows are that long; otherwise it samples them from the replay, which counts them
    as sampled for DFS) and lets the world model `dream` them. It writes
    `<run dir>/media/dream_<env steps>.gif` (the video of `video_frames`) and `.png` (the
    labelled grid of `dream_figure`), and logs to TensorBoard at env steps: a video
    `dream/video` when `moviepy` is installed (TensorBoard's `add_video` needs it), else the
    labelled grid as the image `dream/grid`.

    Args:
        every_n_env_steps: env steps between dreams; 0 turns the callback off.
        context: real frames the model observes before it dreams.
        horizon: frames it dreams with the real actions that followed.
        num_sequences: windows shown, one band each.
        fps: frame rate of the GIF and the video.
    """

    def __init__(
        self,
        every_n_env_steps: int = 10_000,
        context: int = 8,
        horizon: int = 16,
        num_sequences: int = 4,
        fps: int = 8,
    ) -> None:
        if every_n_env_steps < 0:
            raise ValueError(
                f"DreamMedia: every_n_env_steps must be >= 0 (0 = off), got {every_n_env_steps}"
            )
        if min(context, horizon, num_sequences, fps) < 1:
            raise ValueError(
                "DreamMedia: context, horizon, num_sequences and fps must be >= 1, got "
                f"{context}, {horizon}, {num_sequences}, {fps}"
            )
        self.every_n_env_steps = every_n_env_steps
        self.context = context
        self.horizon = horizon
        self.num_sequences = num_sequences
        self.fps = fps
        self._done = 0  # multiples of every_n_env_steps already shown (or passed before the run)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_env_steps:
            # The warm-up (or a resumed run's past) does not count as crossing a multiple.
            self._done = pl_module.env_steps // self.every_n_env_steps

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.every_n_env_steps:
            return
        env_steps = pl_module.env_steps  # the same on every rank: all-process env steps
        if env_steps // self.every_n_env_steps <= self._done:
            return
        self._done = env_steps // self.every_n_env_steps
        log_dir = trainer.log_dir  # a collective under DDP: every rank calls it
        if not trainer.is_global_zero:
            return
        world_model = getattr(pl_module, "world_model", None)
        if not isinstance(world_model, WorldModel):
            raise RuntimeError("DreamMedia needs a module with a `world_model` (DramaModule)")
        window = self._window(trainer, batch)
        with trainer.precision_plugin.forward_context():
            result = dream(world_model, window, self.context, self.horizon)
        self.write(result, Path(log_dir) / "media", env_steps, trainer)

    def write(
        self,
        result: Dream,
        directory: Path,
        env_steps: int,
        trainer: pl.Trainer | None = None,
    ) -> None:
        """Save the GIF and the labelled PNG; log to the trainer's TensorBoard logger, if any."""
        directory.mkdir(parents=True, exist_ok=True)
        frames = video_frames(result)  # [T, N * H, 3 * W, 3]
        save_gif(frames, directory / f"dream_{env_steps}.gif", self.fps)
        title = f"What the world model sees and dreams after {env_steps:,} env steps"
        grid = render(dream_figure(result, title))  # [height, width, 3]
        Image.fromarray(grid).save(directory / f"dream_{env_steps}.png")
        for logger in trainer.loggers if trainer is not None else []:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            if importlib.util.find_spec("moviepy") is not None:
                length, _, width, _ = frames.shape
                n, _, h = result.real.shape[:3]
                video = frames.reshape(length, n, h, width, 3)  # [T, N, H, 3W, 3]
                video = torch.from_numpy(video).permute(1, 0, 4, 2, 3)  # [N, T, 3, H, 3W]
                writer.add_video("dream/video", video, env_steps, fps=self.fps)
            else:
                writer.add_image("dream/grid", grid, env_steps, dataformats="HWC")
            writer.flush()

    def _window(self, trainer: pl.Trainer, batch: Any) -> dict[str, Any]:
        length = self.context + self.horizon
        keys = ("obs", "action", "reward", "is_first")
        usable = isinstance(batch, Mapping) and all(k in batch for k in keys)
        if usable and batch["obs"].shape[1] >= length:
            return {k: batch[k][: self.num_sequences, :length] for k in keys}
        replay = getattr(getattr(trainer, "datamodule", None), "replay", None)
        if replay is None:
            raise RuntimeError(
                f"DreamMedia needs windows of context + horizon = {length} rows: the batch has "
                "shorter ones and there is no `trainer.datamodule.replay` to sample from"
            )
        return replay.sample(self.num_sequences, length)


def _decode(world_model: WorldModel, z: torch.Tensor) -> np.ndarray:
    """z: [..., latent] -> frames [..., H, W, 3] uint8."""
    image = torch.sigmoid(world_model.decoder(z).float())  # [..., 3, H, W] in [0, 1]
    image = (image * 255.0).round().to(torch.uint8).movedim(-3, -1)
    return image.cpu().numpy()


def _signed(value: float) -> str:
    return f"{round(float(value), 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def _annotate(frame: np.ndarray, reward: float, border: tuple[int, int, int] | None) -> np.ndarray:
    """Draw the reward (and a border) onto a copy of an [H, W, 3] uint8 frame."""
    frame = np.ascontiguousarray(frame).copy()
    if border is not None:
        cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), border, 1)
    text = _signed(reward)
    origin = (3, frame.shape[0] - 4)
    font = cv2.FONT_HERSHEY_PLAIN
    cv2.putText(frame, text, origin, font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)  # outline
    cv2.putText(frame, text, origin, font, 0.7, (255, 255, 0), 1, cv2.LINE_AA)
    return frame
