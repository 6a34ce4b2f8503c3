"""The claim record and the helpers that build one.

Every claim function in :mod:`theory` returns a list of :class:`Claim` records: the
measured figure, the target it is compared with, and the verdict. Each record has a
``kind``:

* ``"claim"``: a statement of the paper (or of the digest's reading of it) that must
  hold; ``ok`` when it passes.
* ``"control"``: a *negative control*: the paper's assumption has been broken on
  purpose, and the check is only worth something if it then fails; ``ok`` when it
  fails.
* ``"finding"``: a statement we checked and report *without* it deciding the exit
  code, because it is not a claim of the paper: e.g. a step the digest inferred from a
  proof that turns out false. ``passed`` says whether the statement held; the record
  is always ``ok``, and the table shows it as "finding: refuted" or "finding: holds".

Every record also has a ``strength``:

* ``"evidence"``: the check could fail if the paper, or our implementation, were
  wrong; for each such row the docs name the planted bug or broken assumption that
  turns it red (``docs/theory.md``, ``docs/results/mutations.md``).
* ``"identity"``: true by construction (an algebraic identity of the set-up, such as
  ``ω = 0`` staying 0); a sanity check that guards the harness, not evidence for the
  paper. :func:`identity` takes the reason, which goes into ``detail``.

And ``runs_library``: True when the row's measured figure comes from sgjax library code
(``sgjax.rules``, ``sgjax.estimators``, ``sgjax.interface``, ...) compared with an
independent reference; False when the row checks the paper's mathematics on
hand-written models only (then no bug in sgjax can turn it red). :func:`library` sets it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

#: The allowed values of :attr:`Claim.strength` and :attr:`Claim.kind`.
STRENGTHS = ("evidence", "identity")
KINDS = ("claim", "control", "finding")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One checked claim.

    Attributes:
      name: short identifier, e.g. ``"prop1/critical-point"``.
      reference: where the paper states it, e.g. ``"Prop. 1"`` or ``"Table 2"``.
      measured: the figure measured on the random instances (worst case over them,
        unless ``detail`` says otherwise).
      target: the comparison, human-readable, e.g. ``"≤ 1e-08"``.
      tolerance: the number in ``target``.
      passed: whether ``measured`` meets ``target``.
      instances: how many random problems were checked.
      detail: free text: the paper's figure, spread over instances, what was broken.
      expect_pass: False for a negative control (the check is expected to fail).
      kind: ``"claim"``, ``"control"`` or ``"finding"`` (see the module docstring).
      strength: ``"evidence"`` or ``"identity"`` (see the module docstring).
      runs_library: the measured figure comes from sgjax library code (see the module
        docstring).

    Example:
        >>> c = at_most("demo/zero", "Prop. 1", 3e-12, 1e-8, 4)
        >>> (c.passed, c.ok, c.kind, c.target)
        (True, True, 'claim', '≤ 1e-08')
        >>> control(c, "assumption broken").ok  # a control that passes is a blind check
        False
        >>> finding(c).ok
        True
        >>> identity(c).strength
        'identity'
    """

    name: str
    reference: str
    measured: float
    target: str
    tolerance: float
    passed: bool
    instances: int
    detail: str = ""
    expect_pass: bool = True
    kind: str = "claim"
    strength: str = "evidence"
    runs_library: bool = False

    def __post_init__(self) -> None:
        if self.strength not in STRENGTHS:
            raise ValueError(f"`strength` must be one of {STRENGTHS}, got {self.strength!r}")
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}")

    @property
    def ok(self) -> bool:
        """The verdict is the expected one (a control must fail; a finding is reported)."""
        if self.kind == "finding":
            return True
        return self.passed == self.expect_pass

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, ``ok``, and non-finite numbers as strings.

        Example:
            >>> at_most("demo", "Prop. 1", float("nan"), 1e-8, 1).to_json()["measured"]
            'nan'
        """
        d = dataclasses.asdict(self)
        d["measured"] = _finite_or_str(self.measured)
        d["ok"] = self.ok
        return d


def _finite_or_str(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _bound(
    name: str, reference: str, measured: Any, tolerance: float, instances: int,
    detail: str, expect_pass: bool, *, upper: bool,
) -> Claim:  # fmt: skip
    m = float(measured)
    ok = m <= tolerance if upper else m >= tolerance  # NaN compares False: it fails
    sign = "≤" if upper else "≥"
    return Claim(
        name, reference, m, f"{sign} {tolerance:.3g}", tolerance, bool(ok), int(instances),
        detail, expect_pass,
    )  # fmt: skip


def at_most(
    name: str,
    reference: str,
    measured: Any,
    tolerance: float,
    instances: int,
    detail: str = "",
    *,
    expect_pass: bool = True,
) -> Claim:
    """A claim ``measured ≤ tolerance`` (NaN fails).

    Example:
        >>> at_most("demo", "Thm. 1", 2e-9, 1e-8, 16).passed
        True
    """
    return _bound(name, reference, measured, tolerance, instances, detail, expect_pass,
                  upper=True)  # fmt: skip


def at_least(
    name: str,
    reference: str,
    measured: Any,
    tolerance: float,
    instances: int,
    detail: str = "",
    *,
    expect_pass: bool = True,
) -> Claim:
    """A claim ``measured ≥ tolerance`` (NaN fails).

    Example:
        >>> at_least("demo", "Table 2", 0.01, 5e-3, 2).passed
        True
    """
    return _bound(name, reference, measured, tolerance, instances, detail, expect_pass,
                  upper=False)  # fmt: skip


def control(claim: Claim, what: str) -> Claim:
    """Mark ``claim`` as a negative control: ``what`` names the broken assumption.

    Example:
        >>> c = control(at_most("demo", "Prop. 1", 0.3, 1e-8, 4), "label dropped")
        >>> (c.kind, c.ok, c.detail)
        ('control', True, 'control: label dropped')
    """
    detail = f"control: {what}" + (f"; {claim.detail}" if claim.detail else "")
    return dataclasses.replace(claim, detail=detail, expect_pass=False, kind="control")


def finding(claim: Claim, note: str = "") -> Claim:
    """Mark ``claim`` as a finding: reported, but it does not decide the exit code.

    Use it for a statement that is not the paper's own (e.g. a step the digest read
    into a proof); ``claim.passed`` then says whether that statement held.

    Example:
        >>> f = finding(at_most("demo", "Thm. 1 (proof)", 0.1, 1e-12, 8), "proof gap")
        >>> (f.kind, f.passed, f.ok, f.detail)
        ('finding', False, True, 'finding: proof gap')
    """
    detail = f"finding: {note}" if note else ""
    detail += ("; " if detail and claim.detail else "") + claim.detail
    return dataclasses.replace(claim, detail=detail, kind="finding")


def identity(claim: Claim, why: str = "") -> Claim:
    """Mark ``claim`` as a sanity identity: true by construction, not evidence.

    ``why`` says what makes it true by construction; it opens ``detail``.

    Example:
        >>> c = identity(at_most("thm1/ω=0", "Thm. 1", 0.0, 0.0, 4), "linear ω-update")
        >>> (c.strength, c.detail)
        ('identity', 'identity: linear ω-update')
    """
    detail = f"identity: {why}" if why else ""
    detail += ("; " if detail and claim.detail else "") + claim.detail
    return dataclasses.replace(claim, strength="identity", detail=detail)


def library(claim: Claim) -> Claim:
    """Mark ``claim`` as one whose measured figure comes from sgjax library code.

    Example:
        >>> library(at_most("table1/SG", "Table 1", 0.0, 1e-12, 4)).runs_library
        True
    """
    return dataclasses.replace(claim, runs_library=True)
