"""Dream media: what the world model sees and imagines, as frames, a GIF, a PNG grid and a video.

A dream strip puts three columns side by side for each of a few real replay windows:

    real o_t | reconstruction decoder(z_t), z_t ~ posterior(o_t) | imagined frame

For the first `context` steps the model observes: the third column repeats the reconstruction.
After that it dreams open loop (no further frames, the real actions that followed): with the
alignment of `world_model.py`,

    d_{C-1} = backbone(stem([z_t, a_t]) for t < C)     the context, in parallel
    for k = C..C+H-1:
        z_k ~ prior(d_{k-1});  frame k = decoder(z_k);  r_{k-1} = reward(d_{k-1})
        d_k = backbone.step(stem([z_k, a_k]))

Each dreamed frame gets a red border and the predicted reward of the step that led into it,
r_{k-1}; the real frame next to it shows the true reward r_{k-1} from the replay, for comparison.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from lightning_drama.world_model import WorldModel

DREAM_BORDER = (255, 0, 0)  # RGB: marks frames the model imagined


def dream_frames(
    world_model: WorldModel,
    window: Mapping[str, Any],
    context: int,
    horizon: int,
) -> np.ndarray:
    """Real | reconstructed | imagined frames of real replay windows, as video frames.

    window: `obs` [N, L, H, W, 3] uint8, `action` [N, L] int, and optionally `is_first` [N, L]
    bool (row 0 is taken as an episode start when missing) and `reward` [N, L] (drawn onto the
    real frames), as torch tensors or numpy arrays; L >= context + horizon, later rows are
    ignored.

    Returns uint8 frames [T, N * H, 3 * W, 3] with T = context + horizon: one band of height H
    per window, columns real | reconstruction | imagined (see the module docstring). Runs in eval
    mode (BatchNorm running statistics, no dropout) without gradients and restores the mode.
    """
    if context < 1 or horizon < 1:
        raise ValueError(f"dream_frames: context ({context}) and horizon ({horizon}) must be >= 1")
    length = context + horizon
    obs = torch.as_tensor(window["obs"])
    if obs.dim() != 5 or obs.shape[1] < length:
        raise ValueError(
            f"dream_frames: obs must be [N, L, H, W, 3] with L >= context + horizon = {length}, "
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
    reward = None if reward is None else torch.as_tensor(reward)[:, :length].float().cpu()

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

    real = obs.cpu().numpy()
    imagined = np.concatenate([recon[:, :context], np.stack(dreamed, 1)], 1)  # [N, T, H, W, 3]
    predicted = torch.stack(predicted, 1).numpy()  # [N, horizon]
    for n in range(real.shape[0]):
        for k in range(horizon):
            t = context + k
            imagined[n, t] = _annotate(imagined[n, t], predicted[n, k], DREAM_BORDER)
            if reward is not None:
                real[n, t] = _annotate(real[n, t], float(reward[n, t - 1]), None)
    strip = np.concatenate([real, recon, imagined], 3)  # [N, T, H, 3W, 3]
    return np.ascontiguousarray(
        strip.transpose(1, 0, 2, 3, 4).reshape(length, -1, *strip.shape[3:])
    )


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
    as sampled for DFS) and renders them with `dream_frames`. It writes
    `<run dir>/media/dream_<env steps>.gif` (the video) and `.png` (the grid of `dream_grid`),
    and logs to TensorBoard at env steps: a video `dream/video` when `moviepy` is installed
    (TensorBoard's `add_video` needs it), else the PNG grid as the image `dream/grid`.

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
            frames = dream_frames(world_model, window, self.context, self.horizon)
        self.write(frames, world_model.image_size, Path(log_dir) / "media", env_steps, trainer)

    def write(
        self,
        frames: np.ndarray,
        frame_size: int,
        directory: Path,
        env_steps: int,
        trainer: pl.Trainer | None = None,
    ) -> None:
        """Save the GIF and the PNG grid; log to the trainer's TensorBoard logger, if any."""
        directory.mkdir(parents=True, exist_ok=True)
        grid = dream_grid(frames, frame_size)
        save_gif(frames, directory / f"dream_{env_steps}.gif", self.fps)
        Image.fromarray(grid).save(directory / f"dream_{env_steps}.png")
        for logger in trainer.loggers if trainer is not None else []:
            if not isinstance(logger, TensorBoardLogger):
                continue
            writer = logger.experiment
            if importlib.util.find_spec("moviepy") is not None:
                length, height, width, _ = frames.shape
                n = height // frame_size
                video = frames.reshape(length, n, frame_size, width, 3)  # [T, N, H, 3W, 3]
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


def _annotate(frame: np.ndarray, reward: float, border: tuple[int, int, int] | None) -> np.ndarray:
    """Draw the reward (and a border) onto a copy of an [H, W, 3] uint8 frame."""
    frame = np.ascontiguousarray(frame).copy()
    if border is not None:
        cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), border, 1)
    text = f"{round(reward, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"
    origin = (3, frame.shape[0] - 4)
    font = cv2.FONT_HERSHEY_PLAIN
    cv2.putText(frame, text, origin, font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)  # outline
    cv2.putText(frame, text, origin, font, 0.7, (255, 255, 0), 1, cv2.LINE_AA)
    return frame
