"""One run configuration, built once — from the command line or from code.

:class:`RunConfig` (frozen dataclasses all the way down) is the one place that decides
which options apply to which rule: an option that would be ignored is an error naming the
flag and the rules it applies to. It builds the rule (with its SG optimiser: the rule
owns it) and the network's optimiser, it is what a checkpoint stores, and
:meth:`RunConfig.resume_problems` is what ``--resume`` compares: every field that
changes the computation must be equal; only :data:`MAY_CHANGE` may differ (``steps``
upward, and where outputs go).

The optimiser is part of it: from code any optax transformation
(:meth:`OptimizerConfig.custom`), from the command line one of :data:`OPTIMIZERS`.

Example:
    >>> cfg = RunConfig(rule=RuleConfig.of("sg-prop"), steps=100)
    >>> cfg.rule.options_dict()["prop"], cfg.optimizer.name
    (0.1, 'adam')
    >>> RunConfig(rule=RuleConfig.of("dfa"), sg_optimizer=OptimizerConfig())
    ...                                           # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: the SG optimiser (--sg-lr, --sg-optimizer) applies to --rule sg, sg-prop;
    not to --rule dfa
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optax

from sgjax import losses, nets, rules
from sgjax.infra.run import MAX_SEED, Run, check_seed  # noqa: F401 (re-exported)

#: optimisers the command line offers: name -> ``f(learning_rate)``.
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "rmsprop": optax.rmsprop,
    "adamw": optax.adamw,
}

#: fields that may differ between a checkpoint's run and the run resuming it.
MAY_CHANGE = ("steps", "data_dir")

#: the command-line flag of each rule option (options without one are code-only).
RULE_FLAGS = {"estimator": "--estimator", "at": "--sg-at", "targets": "--targets", "prop": "--prop"}


def _rules_taking(option: str) -> str:
    return ", ".join(s.name for s in rules.RULES.values() if option in s.options) or "none"


def _module_rules() -> str:
    return ", ".join(s.name for s in rules.RULES.values() if s.trains_modules) or "none"


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimiser: one of :data:`OPTIMIZERS` with a learning rate, or any optax one.

    Example:
        >>> OptimizerConfig("sgd", 0.1).to_dict()
        {'name': 'sgd', 'learning_rate': 0.1}
        >>> lion = OptimizerConfig.custom(optax.lion(1e-4), "lion 1e-4")
        >>> lion.to_dict(), type(lion.build()).__name__
        ({'name': 'lion 1e-4', 'custom': True}, 'GradientTransformationExtraArgs')
    """

    name: str = "adam"
    learning_rate: float | None = 1e-3
    transform: optax.GradientTransformation | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.transform is not None:
            return  # from code: the transformation is what it is; `name` describes it
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimiser {self.name!r}; expected one of {list(OPTIMIZERS)}")
        lr = self.learning_rate
        if not isinstance(lr, int | float) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")

    @classmethod
    def custom(cls, transform: optax.GradientTransformation, name: str) -> OptimizerConfig:
        """Any optax transformation; ``name`` describes it (stored, compared on resume)."""
        return cls(name=name, learning_rate=None, transform=transform)

    def build(self) -> optax.GradientTransformation:
        if self.transform is not None:
            return self.transform
        assert self.learning_rate is not None  # checked in __post_init__
        return OPTIMIZERS[self.name](self.learning_rate)

    def to_dict(self) -> dict[str, Any]:
        if self.transform is not None:
            return {"name": self.name, "custom": True}
        return {"name": self.name, "learning_rate": self.learning_rate}


@dataclass(frozen=True)
class RuleConfig:
    """A registered rule and its options, defaults filled in (:meth:`of`).

    Example:
        >>> RuleConfig.of("sg", targets="true").options_dict()["targets"]
        'true'
    """

    name: str = "sg"
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, **options: Any) -> RuleConfig:
        if options.get("sg_optimizer") is not None:
            raise ValueError(
                "RuleConfig: give the SG optimiser as `RunConfig(sg_optimizer=OptimizerConfig"
                "(...))` (--sg-optimizer, --sg-lr; stored and compared on resume), not as a "
                "rule option"
            )
        resolved = rules.spec(name).resolve(**options)
        resolved.pop("sg_optimizer", None)  # RunConfig.sg_optimizer builds it
        return cls(name, tuple(sorted(resolved.items())))

    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def build(self, sg_optimizer: optax.GradientTransformation | None = None) -> rules.UpdateRule:
        """The rule; ``sg_optimizer`` (rules with modules only) is the one it trains them with."""
        extra = {"sg_optimizer": sg_optimizer} if sg_optimizer is not None else {}
        return rules.get(self.name, **self.options_dict(), **extra)

    @property
    def trains_modules(self) -> bool:
        return rules.spec(self.name).trains_modules

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for k, v in self.options:
            out[k] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass(frozen=True)
class PipelineConfig:
    """``--pipeline N``: one stage per device; ``sg`` or ``gpipe``."""

    devices: int
    method: str = "sg"
    micro_batches: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a training run computes.

    Attributes hold the defaults of ``sgjax train``; ``sg_optimizer`` is ``None`` for a
    rule without modules of its own (and then refused if given), and for a rule with
    modules it defaults to Adam at 1e-3 (``--sg-optimizer adam --sg-lr 1e-3``, whatever
    ``optimizer`` is); :meth:`build_rule` hands it to the rule, which owns it.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    train_size: int | None = None
    depth: int = 3
    width: int = 256
    activation: str = "relu"
    norm: str = "none"
    rule: RuleConfig = field(default_factory=lambda: RuleConfig.of("sg"))
    loss: str = "xent"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sg_optimizer: OptimizerConfig | None = None
    steps: int = 500
    batch_size: int = 64
    seed: int = 0
    cosine: bool = False
    pipeline: PipelineConfig | None = None
    p_update: float = 1.0
    sg_update: str = "with-stage"

    def __post_init__(self) -> None:
        if self.activation not in nets.ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; expected one of {list(nets.ACTIVATIONS)}"
            )
        if self.norm not in ("none", "layer", "batch"):
            raise ValueError(f"unknown norm {self.norm!r}; expected none, layer or batch")
        losses.get(self.loss)
        for name in ("depth", "width", "steps", "batch_size"):
            v = getattr(self, name)
            low = 0 if name == "depth" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"`{name}` must be an int ≥ {low}, got {v!r}")
        check_seed(self.seed, "`seed` (--seed)")
        from sgjax.train import SG_UPDATE_POLICIES, check_p_update

        check_p_update(self.p_update, name="`p_update` (--p-update)", allow_zero=False)

        if self.sg_update not in SG_UPDATE_POLICIES:
            raise ValueError(
                f"`sg_update` (--sg-update) must be one of {SG_UPDATE_POLICIES}, "
                f"got {self.sg_update!r}"
            )
        if self.sg_update != "with-stage" and (
            self.p_update == 1.0 or not self.rule.trains_modules
        ):
            raise ValueError(
                "--sg-update decides what --p-update < 1 does to the SG modules; it applies "
                f"with --p-update < 1 and --rule {_module_rules()} (got --p-update "
                f"{self.p_update:g}, --rule {self.rule.name})"
            )
        at = self.rule.options_dict().get("at")
        if self.depth == 0 and at in ("all", "middle") and self.pipeline is None:
            raise ValueError(
                f"--sg-at {at} needs a hidden layer: with --depth 0 the network has one stage "
                "and no hidden boundary; use --sg-at output for one SG module between the "
                "output and the loss, or --depth ≥ 1"
            )
        if self.sg_optimizer is not None and not self.rule.trains_modules:
            raise ValueError(
                "the SG optimiser (--sg-lr, --sg-optimizer) applies to --rule "
                f"{_module_rules()}; not to --rule {self.rule.name}"
            )
        if self.rule.trains_modules and self.sg_optimizer is None:
            object.__setattr__(self, "sg_optimizer", OptimizerConfig())

    # ------------------------------------------------------------------ building

    def net(self, in_dim: int, num_classes: int) -> nets.Network:
        sizes = [in_dim, *([self.width] * self.depth), num_classes]
        return nets.mlp(sizes, self.activation, norm=None if self.norm == "none" else self.norm)

    def build(self, in_dim: int, num_classes: int) -> Run:
        """The :class:`~sgjax.infra.run.Run` this configuration describes, for data of
        ``in_dim`` inputs and ``num_classes`` classes (what the runners take).

        Example:
            >>> run = RunConfig(rule=RuleConfig.of("sg"), depth=2, width=16).build(64, 10)
            >>> run.net.depth, run.rule.name, run.steps, run.config.width
            (3, 'sg', 500, 16)
        """
        return Run(
            self.net(in_dim, num_classes),
            self.build_rule(),
            self.loss,
            self.build_optimizer(),
            steps=self.steps,
            batch_size=self.batch_size,
            seed=self.seed,
            cosine=self.cosine,
            p_update=self.p_update,
            sg_update=self.sg_update,
            config=self,
        )

    def build_rule(self) -> rules.UpdateRule:
        """The rule, with its SG optimiser (rules with modules) built from ``sg_optimizer``
        (each module keeps its own optimiser state, so ``p_update`` needs nothing more)."""
        return self.rule.build(self.sg_optimizer.build() if self.sg_optimizer else None)

    def build_optimizer(self) -> optax.GradientTransformation:
        """The network's optimiser; :func:`sgjax.train.stagewise` when ``p_update`` < 1."""
        opt = self.optimizer.build()
        if self.p_update < 1:  # a skipped stage keeps its own optimiser state
            from sgjax import train

            return train.stagewise(opt)
        return opt

    # ------------------------------------------------------------------ storing

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what checkpoints store and ``--json`` records)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, RuleConfig | OptimizerConfig):
                v = v.to_dict()
            elif isinstance(v, PipelineConfig):
                v = dataclasses.asdict(v)
            if (f.name, v) in (("p_update", 1.0), ("sg_update", "with-stage")):
                continue  # the defaults are left out, so older checkpoints still resume
            out[f.name] = v
        return out

    def resume_problems(self, stored: Mapping[str, Any], checkpoint_step: int) -> list[str]:
        """Why this run cannot resume a checkpoint written with ``stored`` (empty: it can).

        Example:
            >>> old = RunConfig(steps=300).to_dict()
            >>> RunConfig(activation="tanh", steps=400).resume_problems(old, 300)
            ['activation: relu → tanh']
            >>> RunConfig(steps=200).resume_problems(old, 300)  # doctest: +ELLIPSIS
            ['steps: the checkpoint is at step 300, past the 200 asked for ...']
        """
        problems = []
        new = self.to_dict()
        for k in sorted(set(stored) | set(new)):
            if k in MAY_CHANGE:
                continue
            if _normal(stored.get(k)) != _normal(new.get(k)):
                problems.append(f"{k}: {_show(stored.get(k))} → {_show(new.get(k))}")
        if self.steps < checkpoint_step:
            problems.append(
                f"steps: the checkpoint is at step {checkpoint_step}, past the {self.steps} "
                f"asked for (a run cannot go back; ask for ≥ {checkpoint_step})"
            )
        return problems


def _normal(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_normal(x) for x in v]
    if isinstance(v, list):
        return [_normal(x) for x in v]
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    return v


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_show(x)}" for k, x in v.items()) + "}"
    return "none" if v is None else str(v)


def describe_may_change() -> str:
    """The fields a resumed run may change, in words (for error messages)."""
    return (
        "a resumed run may change only --steps (upward), --data-dir, --json, "
        "--checkpoint-every and the progress bar"
    )


def _refuse(flag: str, applies_to: str, rule: str) -> ValueError:
    return ValueError(f"{flag} applies to --rule {applies_to}; not to --rule {rule}")


def from_flags(given: Mapping[str, Any]) -> RunConfig:
    """Build the configuration from the command-line flags the user gave (and only those).

    ``given`` maps argparse destinations (``"sg_lr"`` for ``--sg-lr``) to values, for the
    flags present on the command line; everything else takes :class:`RunConfig`'s
    defaults. A flag that would be ignored is an error naming the flag and the rules (or
    modes) it applies to.

    Example:
        >>> from_flags({"rule": "sg-prop"}).rule.options_dict()["prop"]
        0.1
        >>> from_flags({"rule": "dfa", "targets": "true"})
        Traceback (most recent call last):
        ...
        ValueError: --targets applies to --rule sg, sg-prop; not to --rule dfa
    """
    from sgjax.infra import data

    g = dict(given)
    pipeline = None
    if g.get("pipeline") is not None:
        pipeline, g = _pipeline_flags(g)
    else:
        for flag in ("pipeline_method", "micro_batches"):
            if g.get(flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies only with --pipeline N")
    rule = g.get("rule", "sg")
    spec = rules.spec(rule)
    options: dict[str, Any] = {}
    for dest, option in (
        ("estimator", "estimator"),
        ("sg_at", "at"),
        ("targets", "targets"),
        ("prop", "prop"),
    ):
        if dest in g:
            if option not in spec.options:
                raise _refuse(RULE_FLAGS[option], _rules_taking(option), rule)
            options[option] = g[dest]
    d_opt = OptimizerConfig()  # the one place the default optimiser is written
    sg_opt = None
    if "sg_lr" in g or "sg_optimizer" in g:
        if not spec.trains_modules:
            flag = "--sg-lr" if "sg_lr" in g else "--sg-optimizer"
            raise _refuse(flag, _module_rules(), rule)
        sg_opt = OptimizerConfig(
            g.get("sg_optimizer", d_opt.name), g.get("sg_lr", d_opt.learning_rate)
        )
    dataset = g.get("dataset", "digits")
    key = dataset.replace("-", "_").lower()
    for dest in ("data_dir", "train_size"):
        if g.get(dest) is not None and key not in data.FILE_DATASETS:
            raise ValueError(
                f"--{dest.replace('_', '-')} applies to --dataset "
                f"{', '.join(data.FILE_DATASETS)}; not to --dataset {dataset}"
            )
    d = RunConfig()
    return RunConfig(
        dataset=dataset,
        data_dir=g.get("data_dir"),
        train_size=g.get("train_size"),
        depth=g.get("depth", d.depth),
        width=g.get("width", d.width),
        activation=g.get("activation", d.activation),
        norm=g.get("norm", d.norm),
        rule=RuleConfig.of(rule, **options),
        loss=g.get("loss", d.loss),
        optimizer=OptimizerConfig(g.get("optimizer", d_opt.name), g.get("lr", d_opt.learning_rate)),
        sg_optimizer=sg_opt,
        steps=g.get("steps", d.steps),
        batch_size=g.get("batch_size", d.batch_size),
        seed=g.get("seed", d.seed),
        cosine=bool(g.get("cosine", d.cosine)),
        pipeline=pipeline,
        p_update=float(g.get("p_update", d.p_update)),
        sg_update=g.get("sg_update") or d.sg_update,
    )


def _pipeline_flags(g: dict[str, Any]) -> tuple[PipelineConfig, dict[str, Any]]:
    """Check the flags against ``--pipeline N``; returns the pipeline and the flags to use."""
    n = g["pipeline"]
    method = g.get("pipeline_method") or ("gpipe" if g.get("rule") == "backprop" else "sg")
    rule = "backprop" if method == "gpipe" else "sg"
    if g.get("rule", rule) != rule:
        raise ValueError(
            f"--pipeline trains with --rule sg (--pipeline-method sg) or --rule backprop "
            f"(--pipeline-method gpipe); got --rule {g['rule']} with --pipeline-method {method}"
        )
    depth = g.get("depth")
    at = g.get("sg_at")
    if at is not None and method == "sg":
        # SG modules at some boundaries: the stages between two of them are one pipeline
        # stage (one device), trained by exact backprop inside it
        depth = RunConfig.depth if depth is None else depth
        try:
            bounds = rules.resolve_at(at, depth + 1)
        except ValueError as e:
            raise ValueError(f"--sg-at: {str(e).split(': ', 1)[-1]}") from None
        if depth + 1 in bounds or len(bounds) + 1 != n:
            raise ValueError(
                f"--pipeline {n} runs one group of stages per device, cut at the SG modules: "
                f"--sg-at {at} on {depth + 1} stages (--depth {depth}) puts modules at "
                f"boundaries {list(bounds)}, which makes "
                + (
                    "an SG module at the output (a pipeline's modules sit between stages)"
                    if depth + 1 in bounds
                    else f"{len(bounds) + 1} groups, not {n}"
                )
            )
    elif depth is not None and depth + 1 != n:
        raise ValueError(
            f"--pipeline {n} puts one stage on each of {n} devices, so the network needs "
            f"{n} stages (--depth {n - 1}), but --depth {depth} gives {depth + 1}; "
            "drop --depth (it follows from --pipeline), or cut a deeper network into "
            f"{n} groups with --sg-at"
        )
    else:
        depth = n - 1
    placed = [("sg_at", "--sg-at")] if method != "sg" else []  # (sg: groups, above)
    checked = [*placed, ("targets", "--targets"), ("prop", "--prop"), ("cosine", "--cosine")]
    unsupported = [flag for dest, flag in checked if g.get(dest)]
    if g.get("p_update", 1.0) != 1.0:
        unsupported.append("--p-update")
    if g.get("sg_update"):
        unsupported.append("--sg-update")
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)} not supported with --pipeline (its SG modules regress "
            "onto bootstrapped targets, one tick late)"
        )
    if g.get("micro_batches") is not None and method != "gpipe":
        raise ValueError("--micro-batches applies only with --pipeline-method gpipe")
    m = g.get("micro_batches") or 4
    steps = g.get("steps", RunConfig.steps)
    if method == "gpipe" and steps % m:
        raise ValueError(
            f"--steps counts micro-batches; with gpipe it must be a multiple of "
            f"--micro-batches {m}, got {steps}"
        )
    out = {**g, "rule": rule, "depth": depth}
    out.pop("pipeline_method", None)
    out.pop("micro_batches", None)
    return PipelineConfig(n, method, m if method == "gpipe" else None), out
