"""The paper's evaluations as commands: Table 1 (sample quality vs S and eta), Table 2 (reconstruction error vs
S), Figure 4 (sampling time vs S) and the solver table (quality vs network calls). Each writes a markdown table,
a CSV and a PNG plot into one folder.

Every table is a small definition (`runner.Table`: its cells, how to compute one, its CSV columns, its markdown
and its plot) run by the one experiment runner (`runner.run_table`): plan check -> resume from the folder's CSV
and manifest -> compute the missing cells -> atomic CSV -> markdown -> plot.

- `table1` (table_quality.py): n samples per (sampler, S) cell, all cells starting from the same x_T, scored by
  a Frechet distance to a reference (metric.py: "classifier", the digits classifier's features, not FID;
  "inception", FID).
- `solvers_table` (table_solvers.py): the same score per (solver, steps), reported against the network calls
  each sample actually took.
- `table2` (table_reconstruction.py): encode real images with the eta = 0 ODE (eq. 13), decode with S steps,
  report the per-dimension MSE with pixels in [0, 1].
- `inversion_table` (table_inversion.py): Table 2's round trip for every method the sampler inverts (eq. 13
  with each deterministic solver, with fixed-point refinement, the exact BDIA and EDICT), guided or not, in
  float32 and float64, with the network calls and seconds per image.
- `timing` (table_timing.py): seconds per image of eta = 0 sampling vs S, with a least-squares line and R^2.
- `plot_training` (curves.py): a training run's loss and learning rate.

How to sample (skip, seed, dtype, batch size, solver, ...) comes in one `SampleConfig`; `ddim.commands.eval` is
the command line.
"""

from ddim.evaluation.curves import plot_training, training_records
from ddim.evaluation.metric import METRICS, FeatureMetric, classifier_metric, inception_metric, make_metric
from ddim.evaluation.runner import Table, run_table
from ddim.evaluation.samples import generate_samples, generate_samples_with_nfe, reconstruction_mse
from ddim.evaluation.table_inversion import (INVERSION_FIELDS, INVERSION_METHODS, INVERSION_STEPS,
                                             inversion_table, invertible_solvers)
from ddim.evaluation.table_quality import T1_FIELDS, TABLE1_ETAS, TABLE1_STEPS, table1, table1_markdown
from ddim.evaluation.table_reconstruction import T2_FIELDS, TABLE2_STEPS, table2, table2_markdown
from ddim.evaluation.table_solvers import SOLVER_NFES, TS_FIELDS, solvers_table
from ddim.evaluation.table_timing import TIMING_FIELDS, TIMING_STEPS, linear_fit, timing, timing_markdown
from ddim.generate import decode, encode     # what Table 2 runs, re-exported for callers of this package

__all__ = ["FeatureMetric", "classifier_metric", "inception_metric", "make_metric", "generate_samples",
           "generate_samples_with_nfe", "table1", "solvers_table", "table2", "timing", "linear_fit",
           "reconstruction_mse", "training_records", "plot_training", "Table", "run_table", "METRICS",
           "TABLE1_STEPS", "TABLE1_ETAS", "TABLE2_STEPS", "TIMING_STEPS", "SOLVER_NFES", "T1_FIELDS", "TS_FIELDS",
           "T2_FIELDS", "TIMING_FIELDS", "inversion_table", "invertible_solvers", "INVERSION_STEPS",
           "INVERSION_METHODS", "INVERSION_FIELDS", "table1_markdown", "table2_markdown", "timing_markdown", "encode", "decode"]
