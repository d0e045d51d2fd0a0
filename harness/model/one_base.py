"""One base model per process: a trial's adapter goes onto the loaded base and comes off it exactly.

Deep-copying the base for every trial held two models in memory (for a 7B base, two 7B models before
the first step). Instead `Attachment` records what adapting may change on the base, lets the method
adapt the base in place, and puts every recorded thing back on `detach()`:

- each base module's own attributes: its children (so the original nn.Linear objects return to their
  parents, whether our `inject`, PEFT or a third-party method wrapped them), parameters, buffers,
  hooks (MoA's hooks on decoder layers), train/eval mode and attributes added to it;
- each base parameter's requires_grad and storage: a base weight the method trains (no built-in does)
  is trained in a copy, so the loaded weights are never written;
- the fields of the model's config.

No method needs its own removal code. `attach()` puts the adapted state back on: a --mix group
evaluates its one trained adapter on each of its tasks. The bench, whose rows must coexist, gives each
row its own modules over the base's weights instead (`sharing_weights`).
"""

# Imported where used: transformers (as in loading.py)
import copy
from collections.abc import Callable

from torch import nn

_CONTAINERS = (dict, list, set)  # children, parameters, buffers and hooks live in these


class _Record:
    """The base's state at one moment; `put()` makes it the base's state again."""

    def __init__(self, modules: list[nn.Module], parameters: list[nn.Parameter], configs: list):
        self.modules, self.parameters, self.configs = modules, parameters, configs
        self.attributes = [{k: (v, copy.copy(v) if isinstance(v, _CONTAINERS) else None) for k, v in vars(m).items()} for m in modules]
        self.flags = [(p.requires_grad, p.data) for p in parameters]
        self.fields = [dict(vars(config)) for config in configs]

    def put(self) -> None:
        for module, record in zip(self.modules, self.attributes):
            attributes = vars(module)
            for key in attributes.keys() - record.keys():
                del attributes[key]
            for key, (value, contents) in record.items():
                if contents is not None:  # refill the same container: hook handles and references to it stay valid
                    _refill(value, contents)
                attributes[key] = value
        for parameter, (requires_grad, data) in zip(self.parameters, self.flags):
            parameter.data = data
            parameter.requires_grad_(requires_grad)
        for config, fields in zip(self.configs, self.fields):
            vars(config).clear()
            vars(config).update(fields)


class Attachment:
    """One method's adapter on the shared base; while detached, the base is as it was before `adapt`."""

    def __init__(self, base: nn.Module, adapt: Callable[[nn.Module], nn.Module]):
        modules, parameters = list(base.modules()), list(base.parameters())
        self._parts = (modules, parameters, _configs(modules))  # what a record covers: the base as loaded
        self._off = _Record(*self._parts)
        self._on: _Record | None = None
        try:
            self.model = adapt(base)
            for parameter in parameters:
                if parameter.requires_grad:  # the method trains this base weight: let it train a copy
                    parameter.data = parameter.data.clone()
        except BaseException:
            self._off.put()
            raise
        self.attached = True

    def detach(self) -> None:
        if self.attached:
            self._on = _Record(*self._parts)
            self._off.put()
            self.attached = False

    def attach(self) -> None:
        if not self.attached:
            assert self._on is not None  # recorded by the detach that made it detached
            self._off = _Record(*self._parts)
            self._on.put()
            self.attached = True


def _refill(container, contents) -> None:
    container.clear()
    if isinstance(container, list):
        container.extend(contents)
    else:
        container.update(contents)


def _configs(modules: list[nn.Module]) -> list:
    """The distinct transformers configs the modules hold (PEFT and transformers write fields into them)."""
    from transformers import PretrainedConfig

    found = {id(c): c for m in modules if isinstance(c := vars(m).get("config"), PretrainedConfig)}
    return list(found.values())


def sharing_weights(model: nn.Module) -> nn.Module:
    """A second module tree over the very same weight tensors (parameters and buffers): for the bench,
    whose rows are timed side by side, so each needs its own modules (each method wraps the same
    linears) but none needs its own weights. Every row freezes the shared weights alike."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo=shared)
