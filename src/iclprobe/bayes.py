"""Fit a two-hypothesis Bayesian learner to a language model's in-context learning curve.

The learner holds hypothesis A ("the rule holds") with prior belief theta_0. Each example
is consistent with A with probability c under A and 1 - c under B, so after every example

    theta_{i+1} = theta_i c / (theta_i c + (1 - theta_i)(1 - c)),

which in log-odds is a straight line: logit theta_i = logit theta_0 + i log(c / (1 - c)).
The LM's probability of the correct answer at example i (1-based), P(A)_i, is its belief
*before* seeing example i, so it is compared with theta_{i-1}.

Two fits are offered because they weight the curve differently:

* ``prob_mse`` matches beliefs in probability space (the seed analysis's method). Points near
  0 or 1 carry little weight, so a saturated curve does not dominate.
* ``logodds`` is ordinary least squares on logit P(A). It uses the linear closed form
  directly, but amplifies noise where P(A) is close to 0 or 1.

Any curve can be fitted, including one that carries no information: a random model's P(A)
of 1e-10 at every example gives a tight interval on c and a tiny rmse. So each fit also says
whether it means something (``informative``) and, when not, why (``fit_note``):

* the bootstrap interval of c excludes 0.5 (the learner's belief changes: the slope in
  log-odds is not 0);
* the learner explains at least half of the variance of the mean curve against a flat line
  (``r2_vs_flat``, in the method's space: probability or log-odds);
* at most half of the P(A) values lie within ``_P_CLIP`` of 0 or 1 (``clipped_fraction``),
  where the log-odds are the clipping constant's and probabilities carry no resolution;
* no parameter sits at the optimiser's bound or theta_0 at the clipping value (``at_limit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.optimize import least_squares
from scipy.special import expit, logit

LN2 = math.log(2)

METHODS = ("prob_mse", "logodds")

# Probabilities are clipped before taking logits so that P(A) = 0 or 1 (surprisal of 0 nats
# is common for a confident model) gives a finite log-odds of about +-13.8.
_P_CLIP = 1e-6

# Bound on |logit theta_0| and |log(c / (1 - c))| in the probability-space fit. When the LM
# is near-certain throughout, the loss is flat in these directions and an unbounded optimiser
# could drift to infinity; 20 nats is far beyond anything the data can distinguish.
_PARAM_BOUND = 20.0

_FIT_COLUMNS = ("model", "task", "replicate", "example", "surprisal_nats")

# What a fit must reach to count as informative (see the module docstring).
MIN_R2 = 0.5
MAX_CLIPPED = 0.5

# Units of `loss` and `rmse` per method: what the objective's residuals are measured in.
LOSS_UNITS = {"prob_mse": "probability^2", "logodds": "log-odds nats^2"}
RMSE_UNITS = {"prob_mse": "probability", "logodds": "log-odds nats"}


@dataclass(frozen=True)
class LearnerFit:
    """Best-fitting learner for one set of curves.

    ``loss`` is the method's objective at the optimum (a mean squared error, in
    ``LOSS_UNITS[method]``) and ``rmse`` is its square root (``RMSE_UNITS[method]``).
    """

    c: float
    theta0: float
    loss: float
    rmse: float
    method: str


def _check_open_unit(name: str, value: float) -> None:
    """Raise unless 0 < value < 1; both endpoints make the learner degenerate."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)}")


def simulate_learner(c: float, theta0: float, n: int) -> np.ndarray:
    """Return the learner's beliefs theta_0 .. theta_{n-1}.

    Entry i is P(A) before example i + 1. The recursive update is used on purpose (rather
    than the closed form) so that the closed form can be tested against it.
    """
    _check_open_unit("c", c)
    _check_open_unit("theta0", theta0)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n!r}")
    beliefs = np.empty(n, dtype=float)
    theta = float(theta0)
    for i in range(n):
        beliefs[i] = theta
        consistent_a = theta * c
        theta = consistent_a / (consistent_a + (1.0 - theta) * (1.0 - c))
    return beliefs


def _as_curves(p_correct: np.ndarray) -> np.ndarray:
    """Validate P(A) values and return them as an (R, N) float array."""
    p = np.asarray(p_correct, dtype=float)
    if p.ndim == 1:
        p = p[np.newaxis, :]
    if p.ndim != 2:
        raise ValueError(f"p_correct must have shape (R, N) or (N,), got shape {p.shape}")
    if p.shape[0] < 1 or p.shape[1] < 2:
        # A slope needs at least two examples per curve.
        raise ValueError(f"p_correct needs >= 1 replicate and >= 2 examples, got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("p_correct must be finite and within [0, 1]")
    return p


def _steps(n_replicates: int, n_examples: int) -> np.ndarray:
    """Examples seen before each point (i - 1), laid out like the (R, N) curves."""
    return np.broadcast_to(np.arange(n_examples, dtype=float), (n_replicates, n_examples))


def _fit_logodds(p: np.ndarray) -> tuple[float, float, float]:
    """OLS of logit P(A) on (i - 1), pooled over replicates; return (a, b, loss)."""
    x = _steps(*p.shape).ravel()
    y = logit(np.clip(p, _P_CLIP, 1.0 - _P_CLIP)).ravel()
    design = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (a + b * x)
    return float(a), float(b), float(np.mean(residual**2))


def _fit_prob_mse(p: np.ndarray) -> tuple[float, float, float]:
    """Least squares of theta_{i-1} against P(A)_i in probability space; return (a, b, loss).

    Started from the log-odds fit, which is exact on noiseless curves and close otherwise,
    so the local optimiser lands in the right basin; this makes the fit deterministic.
    """
    x = _steps(*p.shape).ravel()
    y = p.ravel()

    def residuals(params: np.ndarray) -> np.ndarray:
        return expit(params[0] + params[1] * x) - y

    def jacobian(params: np.ndarray) -> np.ndarray:
        theta = expit(params[0] + params[1] * x)
        slope = theta * (1.0 - theta)
        return np.column_stack([slope, slope * x])

    a0, b0, _ = _fit_logodds(p)
    # Keep the start strictly inside the bounds, which least_squares requires.
    inner = _PARAM_BOUND * (1.0 - 1e-9)
    start = np.clip([a0, b0], -inner, inner)
    result = least_squares(
        residuals,
        start,
        jac=jacobian,
        bounds=(-_PARAM_BOUND, _PARAM_BOUND),
        method="trf",
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
    )
    a, b = result.x
    return float(a), float(b), float(np.mean(result.fun**2))


_FITTERS = {"prob_mse": _fit_prob_mse, "logodds": _fit_logodds}


def fit_learner(p_correct: np.ndarray, method: str = "prob_mse") -> LearnerFit:
    """Fit c and theta_0 to P(A) curves of shape (R, N) or (N,).

    Column j of ``p_correct`` is example j + 1, compared with theta_j.
    """
    _check_method(method)
    p = _as_curves(p_correct)
    a, b, loss = _FITTERS[method](p)
    return LearnerFit(
        c=float(expit(b)),
        theta0=float(expit(a)),
        loss=loss,
        rmse=math.sqrt(loss),
        method=method,
    )


def bootstrap_cs(
    p_correct: np.ndarray, method: str, n_boot: int = 200, seed: int = 0
) -> np.ndarray:
    """The fitted c of `n_boot` resamples of the replicates (rows), drawn with replacement.

    Replicates, not examples, are resampled because examples within a curve are dependent
    (each belief builds on the last). With one replicate there is nothing to resample: the
    result is empty.
    """
    _check_method(method)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    p = _as_curves(p_correct)
    n_replicates = p.shape[0]
    if n_replicates == 1:
        return np.empty(0)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_replicates, size=(n_boot, n_replicates))
    return np.array([fit_learner(p[idx], method).c for idx in rows])


def bootstrap_c(
    p_correct: np.ndarray,
    method: str,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of c from `bootstrap_cs`; (nan, nan) with one replicate."""
    _check_open_unit("level", level)
    cs = bootstrap_cs(p_correct, method, n_boot=n_boot, seed=seed)
    if cs.size == 0:
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(cs, [tail, 1.0 - tail])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class FitQuality:
    """Whether a fit describes the curve; see the module docstring for each criterion."""

    c_excludes_half: bool | None
    r2_vs_flat: float | None
    clipped_fraction: float
    at_limit: bool
    informative: bool
    note: str


def _in_method_space(p: np.ndarray, method: str) -> np.ndarray:
    """P(A) as the method measures it: probability, or clipped log-odds."""
    return p if method == "prob_mse" else logit(np.clip(p, _P_CLIP, 1.0 - _P_CLIP))


def fit_quality(
    p_correct: np.ndarray, fit: LearnerFit, interval: tuple[float, float]
) -> FitQuality:
    """Judge a fit of `p_correct` (R, N): does it say more than a flat line would?

    `r2_vs_flat` compares the learner with the best constant on the mean curve over
    replicates, in the method's space; it is None when that curve is exactly flat.
    """
    p = _as_curves(p_correct)
    n = p.shape[1]
    curve = _in_method_space(p, fit.method).mean(axis=0)  # (N,)
    line = logit(fit.theta0) + logit(fit.c) * np.arange(n)  # (N,) the learner in log-odds
    learner = expit(line) if fit.method == "prob_mse" else line
    # Flat up to rounding: a constant's mean is not always exactly itself in floating point.
    flat = np.ptp(curve) <= 1e-12 * np.max(np.abs(curve))
    total = float(np.sum((curve - curve.mean()) ** 2))
    r2 = None if flat else 1.0 - float(np.sum((curve - learner) ** 2)) / total
    clipped = float(np.mean((p < _P_CLIP) | (p > 1.0 - _P_CLIP)))
    a, b = line[0], logit(fit.c)
    edge = _PARAM_BOUND * (1.0 - 1e-6)
    at_bound = fit.method == "prob_mse" and max(abs(a), abs(b)) >= edge
    # Within rounding of the clip: the log-odds fit of an all-clipped curve returns it.
    clip = _P_CLIP * (1.0 + 1e-6)
    at_clip = not clip < fit.theta0 < 1.0 - clip
    lo, hi = interval
    excludes = None if math.isnan(lo) or math.isnan(hi) else bool(lo > 0.5 or hi < 0.5)

    notes = []
    if excludes is None:
        notes.append(f"no interval on c ({p.shape[0]} replicate)")
    elif not excludes:
        notes.append("the interval of c includes 0.5 (no change of belief)")
    if r2 is None:
        notes.append("the curve is flat")
    elif r2 < 0:
        notes.append(f"the learner fits the mean curve worse than a flat line (R² = {r2:.3g})")
    elif r2 < MIN_R2:
        notes.append(f"the learner explains {r2:.0%} of the curve's variance vs a flat line")
    if clipped > MAX_CLIPPED:
        notes.append(f"P(A) within {_P_CLIP:g} of 0 or 1 (clipped) at {clipped:.0%} of points")
    if at_bound:
        notes.append(f"a parameter at the fit's bound (|logit| = {_PARAM_BOUND:g})")
    if at_clip:
        notes.append(f"theta0 within {_P_CLIP:g} of 0 or 1 (the clipping value)")
    return FitQuality(
        c_excludes_half=excludes,
        r2_vs_flat=r2,
        clipped_fraction=clipped,
        at_limit=bool(at_bound or at_clip),
        informative=not notes,
        note="; ".join(notes),
    )


def p_correct_curves(group: pl.DataFrame) -> np.ndarray:
    """Pivot one (model, task) group's long surprisal rows into an (R, N) P(A) array.

    The grid must be complete (every replicate has examples 1..N exactly once), because the
    column position is taken as the number of examples already seen.
    """
    ordered = group.sort("replicate", "example")
    n_replicates = ordered["replicate"].n_unique()
    n_examples = ordered["example"].n_unique()
    complete = (
        ordered.height == n_replicates * n_examples
        and not ordered.select(pl.struct("replicate", "example").is_duplicated().any()).item()
    )
    if not complete:
        raise ValueError("each replicate must have every example exactly once")
    examples = ordered["example"].head(n_examples).to_list()
    if examples != list(range(1, n_examples + 1)):
        raise ValueError(f"examples must be 1..{n_examples} with no gaps, got {examples}")
    p = ordered.select(pl.col("surprisal_nats").neg().exp()).to_series().to_numpy()
    return p.reshape(n_replicates, n_examples)


def _fit_row(
    model: str, task: str, p: np.ndarray, method: str, n_boot: int, seed: int, level: float
) -> dict:
    fit = fit_learner(p, method)
    c_lo, c_hi = bootstrap_c(p, method, n_boot=n_boot, seed=seed, level=level)
    quality = fit_quality(p, fit, (c_lo, c_hi))
    has_interval = quality.c_excludes_half is not None
    return {
        # Group keys are stringified so the output schema is stable whatever the input dtype.
        "model": str(model),
        "task": str(task),
        "method": method,
        "c": fit.c,
        "theta0": fit.theta0,
        "loss": fit.loss,
        "rmse": fit.rmse,
        "loss_units": LOSS_UNITS[method],
        "rmse_units": RMSE_UNITS[method],
        # Without an interval (one replicate) these are unknown, not False.
        "c_lo": c_lo if has_interval else None,
        "c_hi": c_hi if has_interval else None,
        "ln2_inside": bool(c_lo <= LN2 <= c_hi) if has_interval else None,
        "c_minus_ln2": fit.c - LN2,
        "c_excludes_half": quality.c_excludes_half,
        "r2_vs_flat": quality.r2_vs_flat,
        "clipped_fraction": quality.clipped_fraction,
        "at_limit": quality.at_limit,
        "informative": quality.informative,
        "fit_note": quality.note,
        "log_odds_slope": float(logit(fit.c)),
        "n_replicates": p.shape[0],
        "n_examples": p.shape[1],
        "interval_level": level,
        "n_boot": n_boot,
    }


_TABLE_SCHEMA = {
    "model": pl.String,
    "task": pl.String,
    "method": pl.String,
    "c": pl.Float64,
    "theta0": pl.Float64,
    "loss": pl.Float64,
    "rmse": pl.Float64,
    "loss_units": pl.String,
    "rmse_units": pl.String,
    "c_lo": pl.Float64,
    "c_hi": pl.Float64,
    "ln2_inside": pl.Boolean,
    "c_minus_ln2": pl.Float64,
    "c_excludes_half": pl.Boolean,
    "r2_vs_flat": pl.Float64,
    "clipped_fraction": pl.Float64,
    "at_limit": pl.Boolean,
    "informative": pl.Boolean,
    "fit_note": pl.String,
    "log_odds_slope": pl.Float64,
    "n_replicates": pl.Int64,
    "n_examples": pl.Int64,
    "interval_level": pl.Float64,
    "n_boot": pl.Int64,
}


def fit_table(
    surprisal: pl.DataFrame,
    methods: tuple[str, ...] = METHODS,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> pl.DataFrame:
    """Fit the learner per (model, task, method) from long-format surprisal rows.

    Input needs columns model, task, replicate, example (1-based) and surprisal_nats;
    P(A) = exp(-surprisal_nats). Returns one row per (model, task, method), sorted.
    """
    for method in methods:
        _check_method(method)
    missing = [col for col in _FIT_COLUMNS if col not in surprisal.columns]
    if missing:
        raise ValueError(f"surprisal frame lacks columns {missing}")
    rows = []
    for (model, task), group in surprisal.group_by("model", "task"):
        p = p_correct_curves(group)
        rows.extend(_fit_row(model, task, p, m, n_boot, seed, level) for m in methods)
    return pl.DataFrame(rows, schema=_TABLE_SCHEMA).sort("model", "task", "method")


def compare_with_controls(fits: pl.DataFrame, controls: dict[str, str]) -> pl.DataFrame:
    """Each fit beside the fit of its task's shuffled control (same model and method).

    A shuffled control has no rule to learn, so a c that its control matches says
    nothing about the rule. `c_differs_from_control` is True when the two bootstrap
    intervals of c do not overlap; null when the task has no control or either
    fit has no interval.
    """
    control_map = pl.DataFrame(
        {"task": list(controls), "control_task": list(controls.values())},
        schema={"task": pl.String, "control_task": pl.String},
    )
    control_fits = fits.select(
        "model",
        "method",
        pl.col("task").alias("control_task"),
        pl.col("c").alias("control_c"),
        pl.col("c_lo").alias("control_c_lo"),
        pl.col("c_hi").alias("control_c_hi"),
    )
    both = pl.all_horizontal(
        pl.col(k).is_not_null() for k in ("c_lo", "c_hi", "control_c_lo", "control_c_hi")
    )
    disjoint = (pl.col("c_lo") > pl.col("control_c_hi")) | (pl.col("c_hi") < pl.col("control_c_lo"))
    return (
        fits.join(control_map, on="task", how="left")
        .join(control_fits, on=["model", "method", "control_task"], how="left")
        .with_columns(c_differs_from_control=pl.when(both).then(disjoint).otherwise(None))
        .sort("model", "task", "method")
    )
