"""One rank of a distributed test run, launched by torchrun from test_distributed.py:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist/worker.py SPEC.json

SPEC: {"data": dir, "strategy": "ddp"|"fsdp", "batch_size": per-rank batch, "runs":
[{"out": dir, "until": step or null}], "fail": {"rank": r, "call": n} (optional), "train":
{more train.* keys} (optional)}. The
single-process reference runs in the test itself, through the same `make_trainer`.
"""

from __future__ import annotations

import json
import sys

import torch

from scratchlm.config import run_config_from_dict
from scratchlm.data.pretrain import TokenData
from scratchlm.errors import ScratchLMError
from scratchlm.registry import build_model
from scratchlm.train import Trainer, distributed

TRAIN = {"max_steps": 8, "grad_accum": 2, "lr": 3e-3, "warmup_steps": 2, "eval_every": 4,
         "eval_batches": 2, "save_every": 4, "log_every": 1, "device": "cpu"}


def make_trainer(data_dir, out, *, batch_size: int, d: distributed.Dist | None = None,
                 fail: dict | None = None, strategy: str = "auto", **train) -> Trainer:
    d = d or distributed.Dist()
    data = TokenData(data_dir)
    cfg = run_config_from_dict({
        "model": {"family": "llama", "preset": "tiny", "vocab_size": data.vocab_size,
                  "block_size": 32, "dropout": 0.0},
        "train": {**TRAIN, "batch_size": batch_size, "strategy": strategy, **train},
    })
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    calls = {"n": 0}

    def batches(split, rng):
        calls["n"] += 1
        if fail and d.rank == fail["rank"] and calls["n"] == fail["call"]:
            raise ScratchLMError(f"injected failure at batch {calls['n']}")
        return data.batch(split, batch_size=batch_size, block_size=32, rng=rng,
                          rank=d.rank, world=d.world)

    return Trainer(model=model, config=cfg, tokenizer=data.tokenizer(), out_dir=out,
                   batches=batches, show_progress=False, dist=d)


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    d = distributed.setup(spec["strategy"], "cpu")
    try:
        with distributed.named_errors(d):
            for run in spec["runs"]:
                t = make_trainer(spec["data"], run["out"], batch_size=spec["batch_size"], d=d,
                                 fail=spec.get("fail"), strategy=spec["strategy"],
                                 **spec.get("train", {}))
                t.fit(until_step=run.get("until"))
    except ScratchLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
