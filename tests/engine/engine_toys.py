"""Tiny models, datasets and tasks for the engine tests (importable by worker scripts)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from fibervl.tasks.objectives import FeatureQueue, clamp_temperature_, itc_loss


class RegressionData(Dataset):
    """Fixed random regression pairs; ``noise > 0`` adds augmentation noise drawn from the
    *global* torch RNG at load time (so exact resume depends on restoring that RNG)."""

    def __init__(self, n: int = 40, d_in: int = 6, d_out: int = 3, noise: float = 0.0, seed: int = 123):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d_in, generator=g)
        w = torch.randn(d_in, d_out, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, d_out, generator=g)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        x = self.x[i]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return {"x": x, "y": self.y[i]}


class ToyModel(nn.Module):
    """Linear -> GELU -> Dropout -> LayerNorm -> heads.out (names exercise the param groups)."""

    def __init__(self, d_in: int = 6, hidden: int = 16, d_out: int = 3, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Linear(d_in, hidden)
        self.cross_modal = nn.ModuleDict({"mix": nn.Linear(hidden, hidden)})
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)
        self.heads = nn.ModuleDict({"out": nn.Linear(hidden, d_out)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.backbone(x))
        h = self.norm(self.drop(h + self.cross_modal["mix"](h)))
        return self.heads["out"](h)


class RegressionTask(nn.Module):
    """MSE task with a buffer (running loss) to check that task state is checkpointed.

    ``pause_at_call=n`` (> 0): the n-th ``training_step`` of this process touches ``pause_file``
    and sleeps forever, so that a test can SIGKILL the process in the middle of a step."""

    def __init__(self, sleep_s: float = 0.0, pause_at_call: int = 0, pause_file: str = ""):
        super().__init__()
        self.register_buffer("running_loss", torch.zeros(()))
        self.sleep_s = sleep_s
        self.steps_seen = 0
        self.pause_at_call, self.pause_file = pause_at_call, pause_file
        self.calls_here = 0

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        self.calls_here += 1
        if self.calls_here == self.pause_at_call:
            Path(self.pause_file).write_text(f"call {self.calls_here}\n")
            while True:  # wait to be killed
                time.sleep(1.0)
        pred = model(batch["x"])
        loss = F.mse_loss(pred, batch["y"])
        with torch.no_grad():
            self.running_loss.mul_(0.9).add_(0.1 * loss.detach())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"loss": loss, "running_loss": self.running_loss.clone()}


class PairData(Dataset):
    """Paired 'image' and 'text' feature vectors that are noisy views of a shared latent."""

    def __init__(self, n: int = 32, d_img: int = 5, d_txt: int = 4, seed: int = 7):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 3, generator=g)
        self.img = z @ torch.randn(3, d_img, generator=g) + 0.1 * torch.randn(n, d_img, generator=g)
        self.txt = z @ torch.randn(3, d_txt, generator=g) + 0.1 * torch.randn(n, d_txt, generator=g)

    def __len__(self) -> int:
        return len(self.img)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.img[i], "text": self.txt[i]}


class DualEncoder(nn.Module):
    def __init__(self, d_img: int = 5, d_txt: int = 4, d: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_enc = nn.Linear(d_img, d)
        self.text_enc = nn.Linear(d_txt, d)
        self.temp = nn.Parameter(torch.tensor(0.07))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image_enc(image), dim=-1), F.normalize(self.text_enc(text), dim=-1)


class ITCTask(nn.Module):
    """ITC with global gathering and an optional feature queue (a task buffer)."""

    def __init__(self, queue_size: int = 0, d: int = 8):
        super().__init__()
        self.queue = FeatureQueue(d, queue_size) if queue_size else None

    def training_step(self, model: DualEncoder, batch: dict) -> dict:
        clamp_temperature_(model.temp)
        img, txt = model(batch["image"], batch["text"])
        loss = itc_loss(img, txt, model.temp, queue=self.queue)
        if self.queue is not None:
            self.queue.enqueue_global(img, txt)
        return {"loss": loss, "temp": model.temp.detach()}


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class IdRegressionData(RegressionData):
    """RegressionData whose items carry a string id ("s07"); collated into a ``sample_ids`` list."""

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "sample_ids": f"s{i:02d}"}


class _NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a finite loss whose gradient is not)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class FaultyRegressionTask(RegressionTask):
    """RegressionTask that spoils chosen micro-batches: the ``nan_loss_at`` calls of
    ``training_step`` return a NaN loss, the ``nan_grad_at`` calls a finite loss with a NaN
    gradient. Calls count from 1 over the whole run (the counter is a checkpointed buffer).
    ``seen`` records, per call of this process, the call number, the batch's ids and a copy of
    the weights the forward saw."""

    def __init__(self, nan_loss_at=(), nan_grad_at=()):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.nan_loss_at, self.nan_grad_at = set(nan_loss_at), set(nan_grad_at)
        self.seen: list[tuple[int, list, dict]] = []

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        self.calls += 1
        n = int(self.calls)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.seen.append((n, list(batch.get("sample_ids", [])), weights))
        out = super().training_step(model, batch)
        if n in self.nan_loss_at:
            out["loss"] = out["loss"] * float("nan")
        if n in self.nan_grad_at:
            out["loss"] = _NanGradient.apply(out["loss"])
        return out
