"""Each rank of a real 2-process gloo group (started by tests/test_rank_checkpoints.py under torchrun) drives
its RankCheckpoints through what kills leave on disk and writes what it saw to `seen-rank<r>.json` beside the folder."""

import json
import sys
from pathlib import Path

from adamole_bench.harness.train import distributed
from adamole_bench.harness.train.rank_checkpoints import RankCheckpoints

STEPS = 100


def state(step: int, rank: int) -> dict:
    return {"step": step, "steps": STEPS, "rank": rank}


def main(folder: Path) -> None:
    ctx = distributed.context()
    ranks = RankCheckpoints(folder, "0123456789ab", 0, 10, ctx)
    seen: dict = {"rank": ctx.rank}

    ranks.save(state(10, ctx.rank))
    ranks.save(state(20, ctx.rank))
    seen["after two saves"] = ranks.held()  # the older file goes once every rank wrote the newer one
    if ctx.rank == 0:
        ranks.file(30).save(state(30, 0))  # what a kill leaves: rank 0 wrote step 30, rank 1 never did
    ctx.everyone(True)
    loaded = ranks.load(STEPS)
    seen["one rank ahead"] = loaded and [loaded["step"], loaded["rank"]]

    ranks.file(10).save(state(10, ctx.rank))
    if ctx.rank == 1:
        path = ranks.file(20).path
        path.write_bytes(path.read_bytes()[:-5])  # rank 1's step-20 file damaged (a disk that lost its tail)
    ctx.everyone(True)
    loaded = ranks.load(STEPS)
    seen["one file damaged"] = loaded and [loaded["step"], loaded["rank"]]
    seen["for other steps"] = ranks.load(STEPS + 1)  # every file is for 100 steps: none loads

    ranks.remove()
    if ctx.rank == 0:
        ranks.file(40).save(state(40, 0))
    ctx.everyone(True)
    seen["no common step"] = ranks.load(STEPS)
    seen["stop signal"] = ctx.stop_signal(10 if ctx.rank == 1 else None)  # SIGUSR1 on rank 1 alone
    seen["no stop signal"] = ctx.stop_signal(None)
    ranks.remove()
    (folder / f".{ranks.file(50).path.name}.abc.tmp").write_bytes(b"half a save")  # a save killed mid-write
    ranks.remove()
    ctx.everyone(True)
    seen["left"] = sorted(path.name for path in folder.iterdir())
    (folder.parent / f"seen-rank{ctx.rank}.json").write_text(json.dumps(seen))  # one file each: printed lines of two ranks interleave


if __name__ == "__main__":
    main(Path(sys.argv[1]))
