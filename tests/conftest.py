import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def correlated_scores(rng: np.random.Generator, n: int, m: int, k: int = 4, noise: float = 0.7) -> np.ndarray:
    """Scores with a low-rank structure (k latent factors) plus noise, float64."""
    latent = rng.standard_normal((n, k))
    loadings = rng.standard_normal((k, m))
    return latent @ loadings + noise * rng.standard_normal((n, m))


def planted_hierarchy(
    rng: np.random.Generator, top: int = 3, sub: int = 3, per: int = 5, n: int = 4000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores with a planted two-level hierarchy: top groups of sub-groups of classes.

    Returns the (n, m) scores, the top-level label and the sub-level label of each class. Class indices are
    shuffled so that the order has to be found.
    """
    m = top * sub * per
    top_lab = np.repeat(np.arange(top), sub * per)
    sub_lab = np.repeat(np.arange(top * sub), per)
    perm = rng.permutation(m)
    top_lab, sub_lab = top_lab[perm], sub_lab[perm]
    f_top = rng.standard_normal((n, top))
    f_sub = rng.standard_normal((n, top * sub))
    scores = 2.0 * f_top[:, top_lab] + 1.2 * f_sub[:, sub_lab] + 0.8 * rng.standard_normal((n, m))
    return scores, top_lab, sub_lab


def failed_group_scores(
    seed: int, n: int = 6000, subs: int = 5, per: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of ``subs`` sub-groups of ``per`` classes; the first class of each also shares a factor with the others:
    mutually similar (r ~ 0.42) but each kept in its own sub-group by the tree (the paper's failed group).

    Returns the (n, m) scores, each class's sub-group and the failed group's classes.
    """
    rng = np.random.default_rng(seed)
    m = subs * per
    sub = np.repeat(np.arange(subs), per)
    cross = np.arange(0, m, per)
    f_sub, f_g = rng.standard_normal((n, subs)), rng.standard_normal(n)
    x = 1.5 * f_sub[:, sub] + 0.6 * rng.standard_normal((n, m))
    x[:, cross] = f_g[:, None] + f_sub[:, sub[cross]] + 0.6 * rng.standard_normal((n, len(cross)))
    return x, sub, cross


def assert_heatmap_inside(image: np.ndarray, box, matrix, order=None, groups=None, **kwargs) -> None:
    """The labelled picture ``image`` holds, at ``box``, exactly ``render_heatmap``'s image of the matrix."""
    from lightning_classim import render_heatmap

    left, top, right, bottom = (int(v) for v in box)
    crop = np.asarray(image)[top:bottom, left:right, :3]
    side = crop.shape[0]
    expected = render_heatmap(matrix, order, groups, max_pixels=side, min_pixels=side, **kwargs)
    np.testing.assert_array_equal(crop, expected)


def wandb_records(path: Path, timeout: float = 60.0) -> list:
    """The records of an offline ``.wandb`` file (a LevelDB-style log of W&B protobuf records), once W&B's writer has
    put the run's last record (``exit``) on disk: ``finish()`` can return before it has (waits at most ``timeout``)."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _wandb_records(path)
        except (AssertionError, DecodeError, struct.error):  # a record half written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_run_file(root: Path, timeout: float = 60.0) -> Path:
    """The one ``.wandb`` file under ``root`` (waits at most ``timeout`` for W&B's writer to create it)."""
    import time

    deadline = time.monotonic() + timeout
    while not (found := list(root.rglob("*.wandb"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    (path,) = found
    return path


def _wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
    return records


def lightning_net(namespace, in_dim: int, hidden: int, m: int, activation=None, optimizer=None):
    """A small classifier (``body`` then the linear head ``fc``) as a LightningModule of either namespace."""
    import torch
    from torch import nn

    class Net(namespace.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(in_dim, hidden), (activation or nn.ReLU)())
            self.fc = nn.Linear(hidden, m)

        def forward(self, x):
            return self.fc(self.body(x))

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            return self(batch[0])

        def configure_optimizers(self):
            return (optimizer or (lambda p: torch.optim.Adam(p, lr=1e-2)))(self.parameters())

    torch.manual_seed(0)
    return Net()
