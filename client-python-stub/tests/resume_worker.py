"""Continues a saved run in a fresh process: builds the model and optimizer from scratch, loads
the checkpoint, trains on, and saves the final parameters and step figures.

    python3 resume_worker.py TARGET CONFIG CHECKPOINT FIRST_STEP LAST_STEP OUTPUT
"""

import dataclasses
import sys

import torch

from helpers import build_run, run_steps


def main(target: str, config: str, checkpoint: str, first: int, last: int, output: str) -> None:
    torch.set_num_threads(1)
    model, opt, scheduler = build_run(config, target, seed=123)  # a different init: the load must win
    saved = torch.load(checkpoint)
    opt.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    mode_after_load = opt.mode
    opt.train()
    try:
        run_steps(model, opt, scheduler, first, last)
        torch.save({
            "params": [p.detach().clone() for p in model.parameters()],
            "figures": repr(dataclasses.asdict(dataclasses.replace(opt.last_result, step_id=0, contributions=()))),
            "mode_after_load": mode_after_load,
            "state": opt.state_dict(),
        }, output)
    finally:
        opt.delete()


if __name__ == "__main__":
    target, config, checkpoint, first, last, output = sys.argv[1:]
    main(target, config, checkpoint, int(first), int(last), output)
