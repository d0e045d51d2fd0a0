"""The workers that run one unit of `--executor ray` together: a gang of resources.workers_per_trial TrialWorker
actors (harness/run/ray_worker.py), one alone by default.

Several workers are placed as one Ray placement group (PACK: on one node when one has room), so a gang starts
whole or waits whole, never half-placed while holding the slots another gang needs. Rank 0 names the address
and port where the gang's torch.distributed process group meets; every rank receives it with its first unit
(Ray passes the pending answer along without the driver waiting for it), joins, and from then on trains each
trial of each unit as one data-parallel group, as under torchrun. A gang lives or dies whole: when one member
dies the others would wait for it in a collective, so the driver kills the gang and starts a new one.
"""

# Imported where used: ray (the optional extra `ray`)
from dataclasses import dataclass
from typing import Any


class Gang:
    def __init__(self, ray, worker_class, options: dict[str, Any], config, uri: str, env: dict[str, str]):
        """`worker_class`: ray.remote(TrialWorker); `options`: what each member asks of Ray (its CPUs, GPUs, ...)."""
        self.ray = ray
        resources = config.resources
        size = resources.workers_per_trial
        self.group = None
        placements: list[dict[str, Any]] = [{}]
        if size > 1:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial, **resources.custom}
            if resources.accelerator_type:
                bundle[f"accelerator_type:{resources.accelerator_type}"] = 0.001  # what Ray asks of a node for an accelerator type
            self.group = ray.util.placement_group([{k: v for k, v in bundle.items() if v}] * size, strategy="PACK")
            placements = [{"scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)} for i in range(size)]
        self.members = [
            worker_class.options(**options, **placement).remote(config, uri, env, rank, size) for rank, placement in enumerate(placements)
        ]
        self.rendezvous = self.members[0].rendezvous.remote() if size > 1 else None

    def run_group(self, trials: list, sweep_id: str, token: str) -> list:
        """One Ray task per member, rank 0's first: what the driver waits on."""
        return [member.run_group.remote(trials, sweep_id, token, self.rendezvous) for member in self.members]

    def kill(self) -> None:
        for member in self.members:
            self.ray.kill(member)
        if self.group is not None:
            self.ray.util.remove_placement_group(self.group)


STRAGGLER_SECONDS = 60.0  # after rank 0 answered, how long the other ranks get to leave their last collective


@dataclass(eq=False)
class Unit:
    """A unit handed to a gang: its (plan index, trial)s, how often it was tried, the token tagging its runs, one
    Ray task per member, and what came back."""

    group: list
    tries: int
    token: str
    gang: Gang
    refs: list
    answer: tuple | None = None  # rank 0's (outcomes, texts, where)
    died: tuple[int, BaseException] | None = None  # the rank Ray reported dead, and how
    crashed: BaseException | None = None  # a RayTaskError: run_group raised outside a trial (a harness bug)
    stuck: bool = False  # other ranks still busy STRAGGLER_SECONDS after rank 0 answered

    def take(self, ray, ref) -> None:
        """What one member's task gave."""
        rank = self.refs.index(ref)
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            self.crashed = self.crashed or err
        except ray.exceptions.RayError as err:  # the worker (or its node) died
            self.died = self.died or (rank, err)
        else:
            if rank == 0:
                self.answer = answer

    def settle(self, ray, pending: dict) -> bool:
        """After one of its tasks came back: whether the unit is over (every member answered, or one died or
        crashed, or the others hang on after rank 0 answered); its tasks are then out of `pending`."""
        left = [ref for ref in self.refs if ref in pending]
        if left and not (self.died or self.crashed):
            if self.answer is None:
                return False  # a rank other than 0 answered first
            done, left = ray.wait(left, num_returns=len(left), timeout=STRAGGLER_SECONDS)
            for ref in done:
                pending.pop(ref)
                self.take(ray, ref)
            self.stuck = bool(left)
        for ref in left:
            pending.pop(ref)
        return True

    @property
    def whole(self) -> bool:
        """Rank 0 answered and no trial of the unit failed: its results stand even if a member died afterwards."""
        return self.answer is not None and not any(outcome.status == "failed" for outcome in self.answer[0])
