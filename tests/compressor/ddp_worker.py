"""Worker of test_train_ddp.py, launched by torchrun: trains a tiny model with compressor.train.

Usage: torchrun --nproc_per_node N ddp_worker.py OUT_DIR BATCH_SIZE
Rank r writes OUT_DIR/rank{r}.json (its TrainResult and eval calls); rank 0 also the final weights.
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from compressor.training import TrainCallbacks, TrainConfig, is_main_process, train

EPOCHS = 2


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g))


def make_model() -> nn.Module:
    # no BatchNorm: its batch statistics would differ between B and 2B samples
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def make_config(batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=EPOCHS, batch_size=batch_size, lr=0.2, momentum=0.9, weight_decay=1e-3,
                       warmup_epochs=0.5, seed=3)


def main(out: Path, batch_size: int) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    model = make_model()
    eval_calls, main_flags = [], []
    result = train(model, make_data(), make_config(batch_size), output=out / "run", progress=False,
                   eval_fn=lambda m: eval_calls.append(1) or {"score": float(len(eval_calls))},
                   callbacks=TrainCallbacks(on_epoch_end=lambda epoch, m: main_flags.append(is_main_process())))
    report = {"result": result.to_dict(), "eval_calls": len(eval_calls), "is_main": main_flags,
              "group_left": dist.is_initialized()}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    if rank == 0:
        torch.save(model.state_dict(), out / "weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
