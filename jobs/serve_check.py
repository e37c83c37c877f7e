"""``POST /api/check`` of ``tda serve``: the counterfactual check of a report (``tda
check``), the viewer's "Check the hits" button. The body is the report's JSON text as
``/api/attribute`` returned it, in one string (a report holds more JSON members than the
server's body limits let a request nest, and int64 chunk ids survive as written; the
request's byte limit still bounds it), plus the check's settings (:data:`CHECK_RANGES`
bounds);
the answer is the same report with every output chunk's check
(:mod:`tda.attribution.check`). Kept beside ``serve.py`` (its line budget), registered by
:func:`add_check_route` from ``create_app``.
"""

# No `from __future__ import annotations`: FastAPI reads the request model's annotations.

from collections.abc import Callable

from tda.schemas import (
    CHECK_METHODS,
    CHECK_RANGES,
    CHECK_SCOPES,
    AttributionReport,
    CheckSettings,
)

__all__ = ["add_check_route", "check_request_model"]


def check_request_model():
    """The body of ``POST /api/check``: ``report`` (an attribution report's JSON text, made
    on this server's index) and the check's settings, each bounded as ``tda check``'s
    options are."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    defaults = CheckSettings()

    def bounded(name: str, doc: str):
        rng = CHECK_RANGES[name]
        bounds = {"gt" if rng.lo_open else "ge": rng.lo, "le": rng.hi}
        return Field(default=getattr(defaults, name), description=doc, **bounds)

    class CheckRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        report: str = Field(
            description="The report to check: its JSON text, as /api/attribute returns it."
        )
        steps: int = bounded("steps", "Gradient-ascent steps per unlearned set.")
        lr: float = bounded("lr", "Each step's length as a share of the moved weights' norm.")
        draws: int = bounded("draws", "Random sets per output chunk.")
        seed: int = bounded("seed", "Seeds the random sets.")
        control: int = bounded(
            "control", "Random chunks whose loss rise is taken off every drop (0: none)."
        )
        scope: Literal[CHECK_SCOPES] = Field(  # type: ignore[valid-type]
            default=defaults.scope, description="Weights the ascent moves."
        )
        method: Literal[CHECK_METHODS] = Field(  # type: ignore[valid-type]
            default=defaults.method,
            description="How a set is unlearned: alone (ascent), keeping what the rest of "
            "the evidence for the output teaches (project), or until its loss reaches "
            "random training text's (forget; steps caps it), or only what the set's nearest "
            "chunks do not also teach (unique).",
        )

    return CheckRequest


def add_check_route(
    app, attributor, turns, report_model, responses: dict, json_response: Callable,
    is_damage: Callable[[Exception], bool], user_errors=Exception,
) -> None:  # fmt: skip
    """Register ``POST /api/check`` on ``app``: one model turn (``turns``, shared with
    ``/api/attribute``) per check; a report the check refuses, or a bad setting, is a 400
    with its one line; a damaged root (``is_damage``) a 500."""
    import json

    from fastapi import HTTPException

    CheckRequest = check_request_model()

    # a plain `def`: FastAPI runs it in a worker thread, off the event loop
    @app.post("/api/check", response_model=report_model, responses=responses)
    def check(body: CheckRequest):
        try:
            report = AttributionReport.from_json(body.report)
            settings = CheckSettings(steps=body.steps, lr=body.lr, draws=body.draws,
                                     seed=body.seed, scope=body.scope,
                                     method=body.method, control=body.control)  # fmt: skip
            with turns.turn():
                checked = attributor.check(report, settings)
        except json.JSONDecodeError as exc:
            raise HTTPException(400, f"report is not JSON: {exc}") from None
        except user_errors as exc:
            raise HTTPException(500 if is_damage(exc) else 400, str(exc)) from None
        return json_response(checked.to_dict())
