"""Notebook parameters: profiles (``ci``, ``full``), their values, and validation.

Every notebook has a ``parameters`` cell (papermill) whose literals are the ``ci`` profile. The same
names are declared in ``notebooks/params/<slug>.toml`` with the ``full`` value and their allowed range:

    [train_steps]
    help = "optimizer steps for the CNN"
    ci = 150
    full = 3000
    min = 1

Keys: ``ci`` and ``full`` (values), optional ``min``/``max`` (numbers, or each element of a list),
``choices`` (allowed values), ``help``, and ``smoke``: a value for the test suite's determinism check, which
runs the notebook twice at its ``smoke`` values (default: ``ci``) and compares the claims — small enough
that both runs take seconds, large enough that every cell still runs (``smoke_overrides``). ``profile``,
``seed``, ``device`` and ``out_dir`` are common to every notebook and declared here. A bad value raises
:class:`ParamError` with a one-line message naming the parameter and what is allowed; the CLI turns it into
exit code 2 before anything is written.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from . import catalog

PROFILES = ("ci", "full")
RESOLVED_ENV = "COMPANION_PARAMS_RESOLVED"  # set by the runner: injected values are final
DEVICES = ("auto", "cpu", "cuda")


class ParamError(ValueError):
    """A parameter name or value that the notebook does not accept (one-line message)."""


@dataclass(frozen=True)
class Spec:
    name: str
    ci: Any
    full: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple = field(default=())
    smoke: Any = None  # the determinism check's value (None: the ci value)

    def default(self, profile: str) -> Any:
        return self.full if profile == "full" else self.ci

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise :class:`ParamError`."""
        value = _convert(self.name, value, self.ci)
        if self.choices and value not in self.choices:
            raise ParamError(f"{self.name}={value!r} is not allowed; choose one of {', '.join(map(str, self.choices))}")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                    raise ParamError(f"{self.name}={value!r} is out of range; allowed {self._range()}")
        return value

    def _range(self) -> str:
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"[{lo}, {hi}]"


COMMON = {
    "profile": Spec("profile", "ci", "full", "scale: ci (CPU, ~1 min) or full (GPU, real data)", choices=PROFILES),
    "seed": Spec("seed", 0, 0, "random seed for data, model and masks", min=0, max=2**31 - 1),
    "device": Spec("device", "auto", "auto", "auto, cpu or cuda", choices=DEVICES),
    "out_dir": Spec("out_dir", "", "", "where claims.json and figures go ('' = runs/<slug>)"),
}


def _convert(name: str, value: Any, like: Any) -> Any:
    """Coerce ``value`` (possibly a string from the command line) to the type of the default ``like``."""
    kind = type(like)
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(like, list):
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            elem = like[0] if like else value[0]
            return [_convert(name, v, elem) for v in value]
        if isinstance(like, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(like, float):
            return float(value)
        return kind(value)
    except (ValueError, TypeError, IndexError):
        raise ParamError(f"{name}={value!r} is not a valid {kind.__name__}") from None


def specs(slug: str) -> dict[str, Spec]:
    """Common specs plus the notebook's own, from ``notebooks/params/<slug>.toml``."""
    path = catalog.notebooks_dir() / "params" / f"{slug}.toml"
    own: dict[str, Spec] = {}
    if path.is_file():
        with open(path, "rb") as f:
            for name, d in tomllib.load(f).items():
                own[name] = Spec(name, d["ci"], d.get("full", d["ci"]), d.get("help", ""), d.get("min"), d.get("max"),
                                 tuple(d.get("choices", ())), d.get("smoke"))
    return {**COMMON, **own}


def profile_values(slug: str, profile: str) -> dict[str, Any]:
    """All parameter values of a profile."""
    if profile not in PROFILES:
        raise ParamError(f"profile={profile!r} is not allowed; choose one of {', '.join(PROFILES)}")
    return {name: s.default(profile) for name, s in specs(slug).items()} | {"profile": profile}


def smoke_overrides(slug: str) -> dict[str, Any]:
    """The parameters whose ``smoke`` value differs from ``ci``: the overrides of the determinism check."""
    return {name: s.smoke for name, s in specs(slug).items() if s.smoke is not None and s.smoke != s.ci}


def validate(slug: str, values: dict[str, Any]) -> dict[str, Any]:
    """Check names and values; return them converted. Raises :class:`ParamError` on the first problem."""
    table = specs(slug)
    out = {}
    for name, value in values.items():
        if name not in table:
            import difflib

            close = difflib.get_close_matches(name, table, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(table)}"
            raise ParamError(f"unknown parameter {name!r} for {slug}{hint}")
        out[name] = table[name].check(value)
    if out.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ParamError("device='cuda' but no CUDA GPU is visible; use device=auto or cpu")
    return out


def check_data(values: dict[str, Any]) -> None:
    """Raise :class:`ParamError` when a real dataset the parameters ask for is not prepared."""
    from . import data

    name = values.get("dataset")
    if name is not None:
        try:
            data.require(name, values.get("data_dir", ""))
        except data.DataError as exc:
            raise ParamError(str(exc)) from None


def resolve(slug: str, namespace: dict[str, Any], show: bool = True) -> SimpleNamespace:
    """The notebook's first setup call: read its parameters from ``namespace`` (``globals()``), validate.

    With ``profile="full"``, parameters still at their ``ci`` value take the ``full`` value, so that
    changing the one ``profile`` line scales the notebook; values set to anything else are kept. Under
    ``companion run`` the runner has already chosen every value (``$COMPANION_PARAMS_RESOLVED``), so an
    explicit ``-p name <its ci value>`` with ``--profile full`` is kept as given.
    """
    table = specs(slug)
    given = {name: namespace[name] for name in table if name in namespace}
    profile = given.get("profile", "ci")
    if profile not in PROFILES:
        raise ParamError(f"profile={profile!r} is not allowed; choose one of {', '.join(PROFILES)}")
    if profile == "full" and not os.environ.get(RESOLVED_ENV):
        given = {n: (table[n].full if v == table[n].ci else v) for n, v in given.items()}
    values = validate(slug, given)
    check_data(values)
    if not values.get("out_dir"):
        values["out_dir"] = str(catalog.project_root() / "runs" / slug)
    if show:
        print("  ".join(f"{k}={v!r}" for k, v in values.items()))
    return SimpleNamespace(**values)
