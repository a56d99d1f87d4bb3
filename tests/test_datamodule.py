import lightning.pytorch as pl
import pytest
import torch

from lightning_drama.data import DramaDataModule

SMALL = dict(
    capacity=256,
    warmup_steps=48,
    batch_size=3,
    seq_len=16,
    imagine_batch=20,
    imagine_context=4,
)


def small_datamodule(**overrides) -> DramaDataModule:
    return DramaDataModule("ALE/Pong-v5", **{**SMALL, **overrides})


def test_batches_have_the_right_shapes_and_dtypes():
    dm = small_datamodule()
    assert dm.num_actions == 6  # known before setup, for the CLI link into the model
    dm.setup("fit")
    assert dm.env_steps == 48 and len(dm.replay) == 48
    dm.setup("fit")  # idempotent: no second warm-up
    assert dm.env_steps == 48
    batch = next(iter(dm.train_dataloader())).sample()
    expected = {
        "obs": ((3, 16, 64, 64, 3), torch.uint8),
        "action": ((3, 16), torch.int64),
        "reward": ((3, 16), torch.float32),
        "terminated": ((3, 16), torch.bool),
        "truncated": ((3, 16), torch.bool),
        "is_first": ((3, 16), torch.bool),
    }
    for key, (shape, dtype) in list(expected.items()):
        expected[f"start_{key}"] = ((20, 4, *shape[2:]), dtype)
    assert {key: (tuple(v.shape), v.dtype) for key, v in batch.items()} == expected
    assert batch["is_first"][:, 0].sum() <= 1  # only a window starting at row 0 begins an episode
    assert (batch["action"] < 6).all() and (batch["action"] >= 0).all()
    dm.collect()
    assert dm.env_steps == 49 and not dm.budget_reached


def test_two_envs_write_two_streams():
    dm = small_datamodule(num_envs=2, seed=4)
    dm.setup("fit")
    assert dm.env_steps == 48 and dm.replay.size.tolist() == [24, 24]
    first_frames = dm.replay.data["obs"][[0, 128]]
    assert dm.replay.data["is_first"][[0, 128]].all()
    assert first_frames.shape == (2, 64, 64, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(env_id="ALE/NotAGame-v5"), "supported env ids"),
        (dict(env_id="CartPole-v1"), "vector observations"),
        (dict(seq_len=300), "must fit in the replay"),
        (dict(num_envs=2, capacity=24), "must fit in the replay"),
        (dict(sampling="random"), "data.sampling must be one of 'dfs', 'uniform', got 'random'"),
        (dict(warmup_steps=8), "raise it to at least 16"),
        (dict(total_env_steps=48), r"total_env_steps \(48\) must be larger than data.warmup_"),
        (dict(total_env_steps=-5), "data.total_env_steps must be >= 1, got -5"),
        (dict(capacity=20, warmup_steps=48), r"warmup_steps \(48\) must fit in the replay"),
        (dict(batch_size=0), "data.batch_size must be >= 1, got 0"),
        (dict(seq_len=1), "data.seq_len must be >= 2, got 1"),
        (dict(imagine_tau=0.0), "data.imagine_tau must be > 0.0"),
        (dict(env_steps_per_update=0), "env_steps_per_update must be >= 1, got 0"),
    ],
)
def test_bad_configuration_fails_at_construction(overrides, message):
    kwargs = {**SMALL, "env_id": "ALE/Pong-v5", **overrides}
    with pytest.raises(ValueError, match=message):
        DramaDataModule(**kwargs)


def _draw(dm: DramaDataModule, batches: int) -> list[dict[str, torch.Tensor]]:
    stream = iter(dm.train_dataloader())
    return [next(stream).sample() for _ in range(batches)]


def test_state_dict_roundtrip_reproduces_the_next_batches(tmp_path):
    dm = small_datamodule(seed=1)
    dm.setup("fit")
    _draw(dm, 2)
    state = dm.state_dict()
    assert "data" not in state["replay"]  # frames are saved next to the checkpoint, not in it
    dm.replay.save(str(tmp_path))
    expected = _draw(dm, 3)

    for load_before_setup in (False, True):
        resumed = small_datamodule(seed=1)
        if load_before_setup:
            resumed.load_state_dict(state)
            resumed.setup("fit")
        else:
            resumed.setup("fit")
            resumed.load_state_dict(state)
        resumed.replay.load(str(tmp_path))
        assert resumed.env_steps == 48
        for got, want in zip(_draw(resumed, 3), expected, strict=True):
            for key in want:
                assert torch.equal(got[key], want[key]), key


def test_memory_mapped_replay(tmp_path):
    dm = small_datamodule(replay_dir=str(tmp_path / "replay"))
    dm.setup("fit")
    assert (tmp_path / "replay" / "obs.npy").exists()
    assert dm.state_dict()["replay_dir"] == str(tmp_path / "replay")
    assert next(iter(dm.train_dataloader())).sample()["obs"].shape == (3, 16, 64, 64, 3)


class CollectingModule(pl.LightningModule):
    """Minimal training loop: one env step, then one "update" on the batch."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.automatic_optimization = False
        self.shapes = []

    def training_step(self, batch, batch_idx):
        self.trainer.datamodule.collect(policy=None)
        self.shapes.append(tuple(batch["obs"].shape) + tuple(batch["start_obs"].shape))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_runs_under_a_lightning_trainer():
    dm = small_datamodule()
    module = CollectingModule()
    trainer = pl.Trainer(
        max_steps=-1,
        limit_train_batches=4,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    assert module.shapes == [(3, 16, 64, 64, 3, 20, 4, 64, 64, 3)] * 4
    assert dm.env_steps == 48 + 4
    assert dm.replay.n_counts.sum() == 3 * 4 and dm.replay.m_counts.sum() == 20 * 4


def test_the_env_seed_follows_seed_everything_unless_set(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what seed_everything(3) sets
    assert small_datamodule().base_seed == 3
    assert small_datamodule(seed=5).base_seed == 5
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert small_datamodule().base_seed == 0
    first_frames = []
    for seed in (1, 2):
        pl.seed_everything(seed)
        dm = small_datamodule()
        dm.setup("fit")
        first_frames.append(dm.replay.data["action"][:48].copy())
    assert (first_frames[0] != first_frames[1]).any()  # other seed, other warm-up
