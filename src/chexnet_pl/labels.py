"""The fixed class order of the model's outputs.

The 14 NIH findings in alphabetical order, then ``No Finding`` (15 outputs by default).
With ``include_no_finding=False`` the model has the 14 findings alone, as in the CheXNet paper's
table. Mean AUROC is always taken over the 14 findings only.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
NO_FINDING = "No Finding"


def class_names(include_no_finding: bool = True) -> list[str]:
    """Output names in model order: the 14 findings, then ``No Finding`` when included."""
    names = list(FINDINGS)
    if include_no_finding:
        names.append(NO_FINDING)
    return names


def finding_names(class_names: list[str] | tuple[str, ...]) -> list[str]:
    """The outputs that are findings: every class but ``No Finding``. Mean AUROC is taken over
    these, so a model or dataset with another label list needs no other change here."""
    return [name for name in class_names if name != NO_FINDING]


def label_key(name: str) -> str:
    """What two spellings of one label share: ``Pleural Thickening``, ``Pleural_Thickening`` and
    ``pleural thickening`` are one label (figures and the page write a space, NIH's CSV and the
    outputs an underscore)."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


def resolve_label(name: str, class_names: list[str] | tuple[str, ...]) -> str | None:
    """The class in ``class_names`` that ``name`` spells (with a space or an underscore), or None."""
    key = label_key(name)
    return next((c for c in class_names if label_key(c) == key), None)
