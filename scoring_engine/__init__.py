"""cvh scoring engine: value models, Numba batch kernels and a NumPy reference.

A plain library: no gRPC, no database. The scoring service calls it; so can a
notebook, or a Dask cluster: ``scoring_engine.distributed`` (the ``dask`` extra)
fits and scores a Dask collection with these kernels, partition by partition.

Quick use::

    import scoring_engine as se
    model = se.default_model()                      # or se.ValueModel.from_json(text)
    fitted = se.fit(model, matrix)                  # float64 (customers x model.signal_names)
    result = se.score(fitted, matrix, previous_tiers=prev, with_rank=True)
    frozen = fitted.with_tier_thresholds(result.tier_thresholds)   # keep the run's cutoffs
    blob = frozen.to_bytes()                        # store; FittedModel.from_bytes(blob) later
    se.score_one(frozen, {"annual_revenue": 1.2e6, "nps": 40})     # online, ~µs
    se.explain(frozen, {"annual_revenue": 1.2e6, "nps": 40})

The maths, step by step
-----------------------
1. **Transform** each observed value: identity; ``log1p`` = log(1 + max(x, 0));
   ``clip`` to [clip_min, clip_max] (a missing bound is infinite).
2. **Normalise** the transformed value t onto 0..1 with statistics fitted on a population
   (``fit``, one pass, also over chunks):

   * min-max: (t - lo) / (hi - lo) clamped to [0, 1]; lo/hi are the population's minimum and
     maximum unless fixed_min/fixed_max fix them; a degenerate span (constant column, no data,
     hi <= lo) gives 0.5;
   * z-score: the standard normal CDF of (t - mean) / std (population std, ddof 0); a constant
     column (fitted min = max), std 0 or no data gives 0.5;
   * percentile: exact mid-rank within the fitted population, (count below t + 0.5 x count equal
     to t) / n; no data gives 0.5;
   * bands: the score of the last band whose lower_bound <= t; 0 below the first band.

   Then lower-is-better signals take 1 - value. NaN (missing) stays missing.
3. **Dimension score** (0..100) = 100 x weighted mean of its signals' normalised values:
   renormalise (over the signals present; missing if none with weight > 0 is present);
   fixed value (a missing signal counts as missing_value; never missing); min coverage
   (missing unless present weight >= min_coverage x total weight, else renormalise).
4. **Composite** (0..100) = composite-weighted mean of the present dimensions; NaN only when no
   dimension with composite weight > 0 is present.
5. **Tier** (0 = best): tier k takes composites >= its cutoff not taken by a better tier; the
   last tier (floor) takes the rest and NaN composites. Cutoffs are min_composite, or for share
   tiers derived from the scored population: with N composites and m = floor(cumulative share x
   N / 100), the tiers down to k hold everyone strictly above the (m+1)-th best, so ties are
   never split and a tier never exceeds its share (``population_thresholds``). **Hysteresis**:
   given its previous tier p, a customer keeps p while cutoff[p] - band <= composite <=
   cutoff[p-1] + band; it moves only when it crosses a boundary by more than the band.
6. **Rank** 1 = highest composite, exact, ties by row order, NaN last. **Percentile** = 100 x
   (customers strictly below + half of those with an equal composite, itself included) / N.

Rows holding +inf or -inf in a column the model reads raise :class:`NonFiniteValueError` naming
the row and the signal.

The default model
-----------------
``default_model.json`` (its ``description`` lists every signal and unit): four dimensions
(profitability 0.4, strategic growth 0.25, reputation 0.2, feedback 0.15), sixteen signals named as
in the registry (annual_revenue, gross_margin, tenure_years, predicted_ltv, payment_delay_days,
expansion_potential, strategic_fit, product_lines, logo_value, referenceability,
audience_reach, nps, feedback_items_90d, beta_programs, feature_adoption, co_design_sessions),
five tiers by population share (strategic 1 %, key 4 %, growth 15 %, core 30 %, standard) and a
2-point hysteresis band.

Kernels, threads and the first call
-----------------------------------
Numba kernels (``_kernels``) run the same row function serially (under 4,096 rows, and for
``score_one``) or in parallel with ``prange`` over row blocks; parallel launches are serialised by
a lock so that server threads may call the engine concurrently (see ``_config``). Kernels are cached
on disk when a writable cache directory exists (``_config`` explains why that is safe for the
parallel ones with this Numba). ``warm_up()`` compiles or loads everything and returns the seconds
it took; measured figures are in ``BENCHMARKS.md``.
``reference`` is the NumPy implementation of the same maths, the tests' oracle.

Predicted lifetime value
------------------------
``scoring_engine.lifetime_value`` fits BG/NBD and Gamma-Gamma on per-customer frequency, recency, age
and mean spend (Numba log-likelihoods and gradients, SciPy's L-BFGS-B) and predicts the probability
alive, expected purchases, expected spend and a discounted CLV; its module docstring states the maths
and the discretisation, ``reference`` holds the SciPy oracle. ``lifetime_value.warm_up()`` compiles
its kernels.

A value model's ``lifetime_value`` block (``model.LifetimeValueSpec``) names the registry signals holding the
four numbers; ``lifetime_value.fit_population`` fits both models on a population whose signals may be missing
or unusable (and says why derived signals are missing instead of raising), ``lifetime_value.with_derived`` fills
the derived signals (``model.DERIVED_SIGNALS``: predicted_ltv, p_alive, expected_purchases) into a matrix, and
``explain(..., lifetime_value=fit)`` does so for one customer.

A value model's ``outcomes`` block (``model.OutcomeSpec``) names the signals outcome reports read and a
``model.BadProfitRule``; ``ValueModel.exported_signal_names`` is what a run reads from the registry (the model's
inputs, then the outcome signals), and ``outcomes.outcome_columns`` / ``outcomes.bad_profit_flags`` give what a
run stores with each result.
"""

from .engine import (
    CustomerScore, DimensionContribution, Explanation, FittedModel, NonFiniteValueError, ScoreResult, ScoringError,
    SignalContribution, assign_tiers, explain, fit, iter_score_chunks, population_thresholds, rank_composites,
    score, score_chunks, score_one, share_counts, warm_up,
)
from .model import (
    Band, DimensionSpec, Direction, FieldViolation, MissingPolicy, ModelValidationError, Normalization, SignalSpec,
    SignalWeight, TierSpec, Transform, ValueDimension, ValueModel, default_model,
)

__all__ = [
    "Band", "CustomerScore", "DimensionContribution", "DimensionSpec", "Direction", "Explanation", "FieldViolation",
    "FittedModel", "MissingPolicy", "ModelValidationError", "NonFiniteValueError", "Normalization", "ScoreResult",
    "ScoringError", "SignalContribution", "SignalSpec", "SignalWeight", "TierSpec", "Transform", "ValueDimension",
    "ValueModel", "assign_tiers", "default_model", "explain", "fit", "iter_score_chunks", "population_thresholds",
    "rank_composites", "score", "score_chunks", "score_one", "share_counts", "warm_up",
]
