"""Label sets as data: what every dataset's label list shares, and how two lists are matched.

A dataset names its labels (its data module's ``pathologies``); the model's outputs are that list
(``class_names`` in checkpoints). Nothing here knows a particular dataset's findings.

- The *findings* of a label list are all its labels but ``No Finding``; a mean AUROC is over them.
- A label a dataset does not have, or that is not known for an image, is NaN: masked in the loss,
  left out of every metric, never counted as negative (``labelled``).
- Two lists are matched by name, and by the synonyms of a label map (``Effusion`` ↔
  ``Pleural Effusion``): ``match_labels`` pairs a model's outputs with a dataset's labels for
  external validation, ``relabel`` puts one dataset's label matrix in another list's columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NO_FINDING = "No Finding"


def finding_names(class_names: Sequence[str]) -> list[str]:
    """The outputs that are findings: every label but ``No Finding``. Mean AUROC is over these."""
    return [name for name in class_names if name != NO_FINDING]


def mean_row(class_names: Sequence[str]) -> str:
    """The name of the mean-over-findings row of a report on ``class_names``, e.g.
    ``Mean (14 findings)`` for NIH's 15 outputs, ``Mean (13 findings)`` for CheXpert's 14."""
    return f"Mean ({len(finding_names(class_names))} findings)"


def report_order(class_names: Sequence[str], mean: str | None = None) -> list[str]:
    """Findings in order, then the mean row (when named), then ``No Finding`` on its own line."""
    findings = finding_names(class_names)
    tail = [name for name in class_names if name == NO_FINDING]
    return [*findings, *([mean] if mean else []), *tail]


def labelled(labels: np.ndarray) -> np.ndarray:
    """Where a label is known (not NaN): the images a metric of that label may use."""
    return ~np.isnan(np.asarray(labels, dtype=np.float64))


def synonyms_of(label_map: Mapping[str, str] | None) -> dict[str, set[str]]:
    """A symmetric synonym table from a label map ``{name: other name}``: each name with itself
    and the names mapped to or from it."""
    table: dict[str, set[str]] = {}
    for a, b in (label_map or {}).items():
        for x, y in ((str(a), str(b)), (str(b), str(a))):
            table.setdefault(x, {x}).add(y)
    return table


def match_labels(
    outputs: Sequence[str],
    labels: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    shared: bool = False,
) -> list[tuple[str, str]]:
    """(output, label) pairs the two lists share, in output order: the same name, or names the
    label map makes synonyms. Each output is used once, and each label too unless ``shared``
    (several outputs onto one label, when asked for: ``label_map_problems`` says when)."""
    synonyms = synonyms_of(label_map)
    available = list(labels)
    pairs = []
    for output in outputs:
        candidates = [output, *sorted(synonyms.get(output, set()) - {output})]
        match = next((name for name in candidates if name in available), None)
        if match is not None:
            pairs.append((output, match))
            if not shared:
                available.remove(match)
    return pairs


# The side of the model's outputs in ``label_map_problems``' ``sides`` (external validation).
OUTPUTS_SIDE = "the model's outputs"


def label_map_problems(
    label_map: Mapping[str, str] | None,
    sides: Mapping[str, Sequence[str]],
    setting: str = "evaluation.label_map",
    unused_ok: bool = False,
) -> list[str]:
    """What is wrong with a label map's entries between label lists (``sides``: what each list
    is, e.g. "the model's outputs", → its names). An entry is needed when one of its names is in
    some lists but not all: its other name must then be in a list that lacks the first (a typo
    there would leave the finding unmatched without a word). An entry naming nothing of any
    list is wrong too; one whose name every list has is not needed and passes. An entry whose
    other name is missing with nothing close to it (the shipped ``Effusion: Pleural Effusion``
    on a dataset with no effusion label, e.g. SIIM's Pneumothorax only) is a synonym this pair
    of lists has no use for: it passes, and ``unused_entries`` names it for the log. With
    ``unused_ok`` (pooled datasets: one map serves whichever datasets are pooled) that holds on
    every side, not only the outputs'."""
    problems = []
    for first, second in (label_map or {}).items():
        names = (str(first), str(second))
        where = {name: [side for side, listed in sides.items() if name in listed] for name in names}
        if not where[names[0]] and not where[names[1]]:
            everything = [n for listed in sides.values() for n in listed]
            hints = [f"'{n}'{_near(n, everything)}" for n in names]
            problems.append(
                f"{setting} maps {hints[0]} to {hints[1]}, but neither is in {' or '.join(sides)}"
            )
            continue
        for found, missing in (names, names[::-1]):
            if not where[found] or where[missing] or len(where[found]) == len(sides):
                continue
            others = [side for side in sides if side not in where[found]]
            candidates = [n for side in others for n in sides[side]]
            near = _near(missing, candidates)
            if not near and (unused_ok or found in sides.get(OUTPUTS_SIDE, ())):
                continue  # an output this data has no label for, by any spelling: unused here
            problems.append(
                f"{setting} maps '{found}' ({' and '.join(where[found])}) to '{missing}', which "
                f"{' and '.join(others)} do not have"
                + (
                    near
                    or f" (they have {candidates}); "
                    "drop the entry (or give the map as null) if there is no such label"
                )
            )
    return problems


def shared_label_problems(
    outputs: Sequence[str],
    labels: Sequence[str],
    label_map: Mapping[str, str] | None,
    shared: bool,
    setting: str = "evaluation.label_map",
    shared_setting: str = "evaluation.label_map_shared",
) -> list[str]:
    """Outputs that the map sends onto one label (refused unless ``shared``), and an output it
    sends onto several labels (always refused: which one would be a guess)."""
    synonyms = synonyms_of(label_map)
    takers: dict[str, list[str]] = {}
    problems = []
    for output in outputs:
        found = [output] if output in labels else sorted(
            name for name in synonyms.get(output, set()) - {output} if name in labels
        )  # fmt: skip
        if len(found) > 1:
            problems.append(
                f"{setting} matches '{output}' to {len(found)} labels {found}; keep one"
            )
        for label in found[:1]:
            takers.setdefault(label, []).append(output)
    for label, many in takers.items():
        if len(many) > 1 and not shared:
            problems.append(
                f"{setting} sends {len(many)} outputs {many} onto the one label '{label}'; give "
                f"{shared_setting}=true if each of them is meant to take that label"
            )
    return problems


def _near(name: str, candidates: Sequence[str]) -> str:
    from chexnet_pl.validation import closest

    found = closest(name, candidates, count=2)
    return f" (did you mean {' or '.join(repr(n) for n in found)}?)" if found else ""


def union_labels(
    label_lists: Sequence[Sequence[str]], label_map: Mapping[str, str] | None = None
) -> list[str]:
    """The ordered union of several label lists; synonyms count once, under the first list's
    name. ``No Finding``, when any list has it, comes last."""
    union: list[str] = []
    for names in label_lists:
        taken = {label for _, label in match_labels(names, union, label_map)}
        matched = {output for output, _ in match_labels(names, union, label_map)}
        union += [n for n in names if n not in matched and n not in taken]
    return report_order(union)


def relabel(
    labels: np.ndarray,
    source: Sequence[str],
    target: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    shared: bool = False,
) -> np.ndarray:
    """``labels`` (columns ``source``) in the columns ``target``; a target label the source does
    not have (by name or synonym) is NaN for every row. ``shared``: one source label may fill
    several target columns (``match_labels``)."""
    result = np.full((len(labels), len(target)), np.nan, dtype=np.float32)
    column = {name: j for j, name in enumerate(source)}
    for output, label in match_labels(target, source, label_map, shared):
        result[:, list(target).index(output)] = labels[:, column[label]]
    return result


def label_key(name: str) -> str:
    """What two spellings of one label share: ``Pleural Thickening``, ``Pleural_Thickening`` and
    ``pleural thickening`` are one label (figures and the page write a space, NIH's CSV and the
    outputs an underscore)."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def resolve_label(name: str, class_names: Sequence[str]) -> str | None:
    """The class in ``class_names`` that ``name`` spells (with a space or an underscore), or None."""
    key = label_key(name)
    return next((c for c in class_names if label_key(c) == key), None)
