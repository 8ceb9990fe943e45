"""Time the subgroup report (patient bootstrap by sex, age band, view) on the full official test
split: 25,596 images of 2,797 patients from the real NIH metadata, with realistic predictions.

.venv/bin/python benchmarks/subgroups.py [--samples 1000] [--meta ../shared/data/nih-meta]

The predictions are built from the labels: a per-class score with a class-specific separation
(AUROCs about 0.75-0.9, as a real CheXNet), correlated findings, patient-level noise (images
of one patient look alike), rounded to 3 decimals (ties, as in stored CSVs).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import PATIENT, class_names, read_data_entry
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.evaluation.auroc import bootstrap_auroc
from chexnet_pl.evaluation.report import choose_threshold
from chexnet_pl.evaluation.settings import EvaluationSettings
from chexnet_pl.evaluation.subgroups import score_subgroups, write_subgroup_report
from chexnet_pl.evaluation.subgroups.summary import format_summary

REPO = Path(__file__).resolve().parents[1]


def realistic_scores(labels: np.ndarray, patients: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    separation = np.linspace(0.9, 1.9, labels.shape[1])  # per class: AUROC ≈ Φ(sep/√2·...)
    _, patient_codes = np.unique(patients, return_inverse=True)
    patient_noise = rng.normal(0, 0.6, (patient_codes.max() + 1, labels.shape[1]))[patient_codes]
    shared = rng.normal(0, 0.5, (len(labels), 1))  # findings co-occur in the scores too
    logits = labels * separation + patient_noise + shared + rng.normal(0, 0.8, labels.shape) - 2.5
    return np.round(1 / (1 + np.exp(-logits)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--meta", type=Path, default=REPO.parent / "shared" / "data" / "nih-meta")
    parser.add_argument("--quick", action="store_true", help="20 resamples (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.samples = 20
    logging.basicConfig(level=logging.WARNING)

    truth = label_index(read_data_entry(args.meta / "Data_Entry_2017_v2020.csv.gz"))
    test = truth.loc[read_name_list(args.meta / "test_list.txt")]
    names = class_names()
    labels = test[names].to_numpy()
    patients = test[PATIENT].to_numpy()
    scores = realistic_scores(labels, patients)
    thresholds = [choose_threshold(scores[:, j], labels[:, j]) for j in range(len(names))]
    print(f"{len(test):,} images, {len(set(patients)):,} patients, {args.samples} resamples")

    start = time.perf_counter()
    bootstrap_auroc(scores, labels, patients, args.samples)
    overall = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        spec = EvaluationSettings.from_config(None).subgroup_spec  # the shipped settings
        start = time.perf_counter()
        result = score_subgroups(
            scores, labels, patients, test, names, thresholds, spec, args.samples
        )
        write_subgroup_report(result, Path(folder), plots=False)
        subgroups = time.perf_counter() - start
        start = time.perf_counter()
        result = score_subgroups(
            scores, labels, patients, test, names, thresholds, spec, args.samples
        )
        write_subgroup_report(result, Path(folder))
        with_plot = time.perf_counter() - start
    table = result.table
    cells = int(
        ((table["subgroup"] != "gap (max - min)") & ~table["finding"].str.startswith("Mean")).sum()
    )
    print(format_summary(result))
    print(
        pd.DataFrame(
            {
                "seconds": [overall, subgroups, with_plot],
                "what": [
                    "overall per-class bootstrap (resampling.class_aurocs via auroc.bootstrap_auroc, 15 classes)",
                    f"subgroup report, {cells} subgroup × finding cells + gaps + underdiagnosis",
                    "the same with the forest plot PNG",
                ],
            }
        ).to_string(index=False, float_format=lambda v: f"{v:.2f}")
    )


if __name__ == "__main__":
    main()
