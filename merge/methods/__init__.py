"""The merge methods: one typed entry per method, the only place that lists them.

An entry says what the config accepts for the method (its parameters, their defaults and
the values they may take; whether it needs base_model and how many models it merges), what
the plan gives each tensor job, whether the method is random (draws from the seeded
stream), and which function computes one output tensor. Config validation, the plan, the
engine's dispatch and the kernels read these entries; nothing else branches on a method's
name.

Adding a method: a module with its kernel (methods/slerp.py and methods/gta.py hold the
arithmetic of the built-in ones, kernels.py their streaming jobs; kernels.elementwise runs
a method that is elementwise in its inputs), and one entry in BUILTIN below. register()
adds one at run time (a plugin, a test).

Importing this module is cheap: kernels are named as "module:function" and imported when
the first tensor is computed, so neither torch nor numpy loads here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

# The merge's options (run_merge keywords, command flags) that a method may read; see MergeMethod.options.
OPTIONS = ("precise", "mergekit_sort")


@dataclass(frozen=True)
class Parameter:
    """One parameter a method reads, as mergekit declares it."""

    name: str
    default: Any = None  # None: required (a recipe without it is refused, as mergekit refuses it)
    per_model: bool = False  # given per model (a list over the contributing models in the job), else one per merge
    job_key: str | None = None  # the job's key for it (per-model: the plural, "weights"); default its name
    boolean: bool = False  # read as true/false ("true"/"false" strings too), else a number
    interval: str | None = None  # "[0, 1]", "(0, 1]", ...: numbers outside are refused, by the config and per tensor

    def __post_init__(self):
        if self.per_model and not self.job_key:
            raise ValueError(f"parameter {self.name!r}: a per-model parameter needs job_key (its plural)")
        if self.interval is not None:
            _parse_interval(self.interval)  # a typo fails where the method is declared, not mid-merge

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def key(self) -> str:
        return self.job_key or self.name

    @cached_property
    def _bounds(self) -> tuple[tuple[float, bool], tuple[float, bool]] | None:
        return None if self.interval is None else _parse_interval(self.interval)

    def accepts(self, value: float) -> bool:
        """Whether `value` lies in `interval` (always, without one)."""
        if self._bounds is None:
            return True
        (low, low_closed), (high, high_closed) = self._bounds
        return (low < value or (low_closed and low == value)) and (value < high or (high_closed and value == high))


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: what the config accepts, what the plan resolves, what computes it."""

    name: str
    # "module:function" (a leading "." is relative to hpcadapt_merge), or the function itself:
    # function(job, out_fd, counts, extra, **kernel_args) computes the job's tensor, writes it to
    # its byte range of out_fd, adds NaN/Inf to `counts` (kernels._Nonfinite) and returns the
    # job's report (a JSON-able dict with at least "name" and "method"). Runs on torch.
    kernel: str | Callable
    parameters: tuple[Parameter, ...] = ()  # in the order the plan resolves them
    # What base_model is to the method, for messages ("the t = 0 end"); the method then needs it,
    # and contributors are the models besides it. None: no base; every model contributes, and
    # a base_model given must be one of the models.
    base: str | None = None
    models: int | None = None  # exactly this many distinct models (base included); None: any number
    options: tuple[str, ...] = ()  # of OPTIONS, those the method reads (they go into its jobs' params)
    # Random methods: "module:function" giving, for a job, the number of 32-bit draws each
    # contributor takes from the seeded stream (0: none). The engine walks one stream through
    # the jobs in name order and hands each job its contributors' starting states (extra["rng"]).
    draws: str | None = None
    kernel_args: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the kernel
    card: str | None = None  # "module:function": (plan, reports) -> lines the model card adds

    def __post_init__(self):
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown option(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(OPTIONS)})")
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r}: a parameter is declared twice ({', '.join(names)})")

    @property
    def random(self) -> bool:
        """Whether the method draws random numbers (and so reads the seed)."""
        return self.draws is not None

    @property
    def shared(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if not p.per_model)

    @property
    def per_model(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.per_model)

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def kernel_function(self) -> Callable:
        return _resolve(self.kernel)

    def draws_function(self) -> Callable:
        return _resolve(self.draws)

    def card_function(self) -> Callable | None:
        return _resolve(self.card) if self.card else None


def _resolve(target: str | Callable) -> Callable:
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module, _PACKAGE), attribute)


_PACKAGE = __name__.rpartition(".")[0]  # hpcadapt_merge


def _parse_interval(text: str) -> tuple[tuple[float, bool], tuple[float, bool]]:
    try:
        low, high = (float(part) for part in text[1:-1].split(","))
    except ValueError:
        low = high = None
    if low is None or text[0] not in "[(" or text[-1] not in "])":
        raise ValueError(f"interval {text!r}: expected the form [a, b], (a, b], [a, b) or (a, b)")
    return (low, text[0] == "["), (high, text[-1] == "]")


# mergekit 0.1.5's parameters and defaults.
_WEIGHT = Parameter("weight", per_model=True, job_key="weights")
_DENSITY = Parameter("density", 1.0, per_model=True, job_key="densities", interval="(0, 1]")


def _task_arithmetic(name: str, *, normalize: bool, rescale: bool, sparsify: str | None, consensus: bool,
                     options: tuple[str, ...] = ("precise",), draws: str | None = None) -> MergeMethod:
    """Generalized task arithmetic (methods/gta.py): base + λ·Σ wᵢ·sparsified δᵢ."""
    return MergeMethod(
        name,
        kernel=".kernels:gta_job",
        parameters=(_WEIGHT, Parameter("normalize", normalize, boolean=True),
                    Parameter("rescale", rescale, boolean=True), Parameter("lambda", 1.0),
                    Parameter("int8_mask", False, boolean=True), _DENSITY),
        base="the model the task vectors are taken from",
        options=options,
        draws=draws,
        kernel_args={"sparsify": sparsify, "consensus": consensus},
    )


BUILTIN = (
    MergeMethod("slerp", kernel=".kernels:slerp_job", parameters=(Parameter("t", interval="[0, 1]"),),
                base="the t = 0 end", models=2, card=".output:slerp_card"),
    MergeMethod("linear", kernel=".kernels:linear_job",
                parameters=(_WEIGHT, Parameter("normalize", True, boolean=True)), options=("precise",)),
    _task_arithmetic("task_arithmetic", normalize=False, rescale=False, sparsify=None, consensus=False),
    _task_arithmetic("ties", normalize=True, rescale=False, sparsify="magnitude", consensus=True,
                     options=("precise", "mergekit_sort")),
    _task_arithmetic("dare_ties", normalize=False, rescale=True, sparsify="random", consensus=True,
                     draws=".methods.gta:random_draws"),
    _task_arithmetic("dare_linear", normalize=False, rescale=True, sparsify="random", consensus=False,
                     draws=".methods.gta:random_draws"),
)

REGISTRY: dict[str, MergeMethod] = {}
METHOD_NAMES: tuple[str, ...] = ()  # the registered names, in registration order (rebound by register/unregister)


def register(method: MergeMethod, *, replace: bool = False) -> MergeMethod:
    """Make `method` available to recipes (merge_method: NAME). Register before the merge starts:
    worker processes are forked then and see the registry as it was."""
    global METHOD_NAMES
    if not isinstance(method, MergeMethod):
        raise TypeError(f"register() takes a MergeMethod, got {type(method).__name__}")
    if method.name in REGISTRY and not replace:
        raise ValueError(f"merge method {method.name!r} is already registered")
    if method.name == "copy":
        raise ValueError("'copy' is the plan's name for tensors copied verbatim (not floating point)")
    REGISTRY[method.name] = method
    METHOD_NAMES = tuple(REGISTRY)
    return method


def unregister(name: str) -> None:
    global METHOD_NAMES
    del REGISTRY[name]
    METHOD_NAMES = tuple(REGISTRY)


class UnknownMethod(LookupError):
    """A merge_method nobody registered; the message lists the registered ones."""


def get(name: str) -> MergeMethod:
    """The registered method `name`; UnknownMethod naming the registered ones if there is none."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownMethod(f"unknown merge_method {name!r}; "
                            f"this merger implements {', '.join(METHOD_NAMES)}") from None


for _method in BUILTIN:
    register(_method)
