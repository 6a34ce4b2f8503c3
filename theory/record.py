"""The claim record and the helpers that build one.

Every claim function in :mod:`theory` returns a list of :class:`Claim` records: the
measured figure, the target it is compared with, and the verdict. A record whose
``expect_pass`` is False is a *negative control*: the paper's assumption has been
broken on purpose, and the check is only worth something if it then fails. The
record is ``ok`` when its verdict is the expected one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


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

    @property
    def ok(self) -> bool:
        """The verdict is the expected one (a negative control must fail)."""
        return self.passed == self.expect_pass

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["measured"] = _finite_or_str(self.measured)
        d["ok"] = self.ok
        return d


def _finite_or_str(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


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
    """A claim ``measured ≤ tolerance`` (NaN fails)."""
    m = float(measured)
    return Claim(
        name,
        reference,
        m,
        f"≤ {tolerance:.3g}",
        tolerance,
        bool(m <= tolerance),
        int(instances),
        detail,
        expect_pass,
    )


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
    """A claim ``measured ≥ tolerance`` (NaN fails)."""
    m = float(measured)
    return Claim(
        name,
        reference,
        m,
        f"≥ {tolerance:.3g}",
        tolerance,
        bool(m >= tolerance),
        int(instances),
        detail,
        expect_pass,
    )


def control(claim: Claim, what: str) -> Claim:
    """Mark ``claim`` as a negative control: ``what`` names the broken assumption."""
    detail = f"control: {what}" + (f"; {claim.detail}" if claim.detail else "")
    return dataclasses.replace(claim, detail=detail, expect_pass=False)
