"""Several datasets trained and evaluated as one: ``data=nih+chexpert``, or any of the shipped
datasets through ``data=pooled data.members=[nih,padchest,vindr_cxr]`` (each member's settings
under ``data.datasets.<name>``, e.g. ``data.datasets.padchest.root=/data/padchest``).

Each dataset reads its own tables, split and view filter as it would alone; the pool is the union
of their labels, with the label map's synonyms counted once (NIH's Effusion and CheXpert's
Pleural Effusion are one output, named as the first dataset names it). A label a dataset does not
have is NaN for its images: masked in the loss, left out of every metric, never a negative.
Patient ids are prefixed with the dataset's name, so two datasets' patient 1 stay two patients;
the ``Dataset`` column says where each image comes from (``evaluation.subgroups=[dataset]``
reports AUROC per dataset). Images are decoded from their files (each dataset's own prepared
cache is not used here).

A member whose data module spells NIH's findings its own way (``label_spellings``: VinDr-CXR's
``Pleural effusion``, ``Pulmonary fibrosis``, ``Pleural thickening``, ``No finding``) has those
labels renamed to NIH's names before the union, so the pool has one output per finding whichever
members it holds; the label map (``evaluation.label_map``) then merges the remaining synonyms
(NIH's Effusion and CheXpert's Pleural Effusion).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from chexnet_pl.data.build import build_datamodule
from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.labelled_images import DATASET, LabelledImages
from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.label_sets import (
    label_map_problems,
    match_labels,
    relabel,
    shared_label_problems,
    union_labels,
)

log = logging.getLogger(__name__)


class PooledDataModule(ChestXrayDataModule):
    """The union of ``datasets`` (name → a data config with ``_target_``, as in ``conf/data``).

    Args:
        datasets: the member datasets' settings; their image and loader settings are not used
            (this module's are).
        members: which of ``datasets`` to pool (``data=pooled`` lists every shipped dataset and
            pools these); None: all of them (``data=nih+chexpert``).
        label_map: output name ↔ label name synonyms merged into one output
            (``evaluation.label_map``): each entry must join a label of one dataset to a label
            of another, else a ``ConfigError`` naming the closest labels.
        label_map_shared: whether the map may send one dataset's label to several outputs
            (``evaluation.label_map_shared``).
        The other arguments are ``ChestXrayDataModule``'s.
    """

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, Any]],
        label_map: Mapping[str, str] | None,
        root: str | None,
        cache: str,
        label_map_shared: bool = False,
        members: Sequence[str] | None = None,
        **settings: Any,
    ) -> None:
        # plain values in the checkpoint's hparams: the members' settings only
        datasets, members = pool_members(_plain(datasets) or {}, _plain(members))
        label_map = _plain(label_map) or {}
        super().__init__(root, cache=cache, **settings)
        if not datasets:
            raise DataError(
                "data.datasets is empty: give the datasets to pool, e.g. data=nih+chexpert"
            )
        if cache != "off":
            log.info("pooled datasets decode their image files: data.cache=%s is not used", cache)
            self.cache_mode = "off"
        self.members: dict[str, ChestXrayDataModule] = {}
        for name, member in datasets.items():
            if "_target_" not in member:
                raise DataError(f"data.datasets.{name} has no _target_ (the data module to use)")
            self.members[name] = build_datamodule(member)  # unset settings: the shipped ones
        self.label_map = dict(label_map)
        self.label_map_shared = bool(label_map_shared)
        # each member's labels under the pool's names (its own spellings of NIH's findings renamed)
        self.member_labels = {
            name: member_label_names(member) for name, member in self.members.items()
        }
        sides = {f"{name}'s labels": labels for name, labels in self.member_labels.items()}
        problems = label_map_problems(self.label_map, sides, unused_ok=True)
        if problems:
            raise ConfigError(*problems)
        self.pathologies = union_labels(list(self.member_labels.values()), self.label_map)
        for labels in self.member_labels.values():
            problems += shared_label_problems(self.pathologies, labels, self.label_map,
                                              self.label_map_shared)  # fmt: skip
        if problems:
            raise ConfigError(*dict.fromkeys(problems))
        log.info("%s", self.describe())

    def describe(self) -> str:
        """One line: the pooled outputs, and which dataset's label each merged output takes."""
        merged = [
            f"{output} <- {name}'s {original.get(label, label)}"
            for name, member in self.members.items()
            for original in [dict(zip(self.member_labels[name], member.pathologies, strict=True))]
            for output, label in match_labels(self.pathologies, self.member_labels[name],
                                              self.label_map, self.label_map_shared)
            if output != original.get(label, label)
        ]  # fmt: skip
        return (
            f"{len(self.pathologies)} outputs pooled from {', '.join(self.members)}: "
            f"{self.pathologies}" + (f"; label map: {', '.join(merged)}" if merged else "")
        )

    def read_labels(self) -> LabelledImages:
        tables, labels, sources, unmatched = [], [], [], []
        for name, member in self.members.items():
            images = member.read_labels()
            if images.unmatched is not None:
                unmatched.append(images.unmatched)
            table = images.table.copy()
            table[PATIENT] = name + "/" + table[PATIENT].astype(str)
            table[DATASET] = name
            tables.append(table)
            labels.append(relabel(images.labels, self.member_labels[name], self.pathologies,
                                  self.label_map, self.label_map_shared))  # fmt: skip
            sources.append(images.source)
            lacking = [n for n, column in zip(self.pathologies, labels[-1].T, strict=True)
                       if np.isnan(column).all()]  # fmt: skip
            log.info("%s: %d images; labels it lacks (NaN, masked): %s", name, len(table),
                     lacking or "none")  # fmt: skip
        table = pd.concat(tables, ignore_index=True)
        repeated = table[IMAGE].duplicated(keep=False).to_numpy()
        if repeated.any():
            shared = table.loc[repeated, [IMAGE, DATASET]].drop_duplicates().head(4)
            raise DataError(
                f"{int(repeated.sum())} images share a name across the pooled datasets, e.g. "
                f"{shared.to_dict('records')}; each image needs a unique name"
            )
        return LabelledImages(
            table, np.concatenate(labels), " + ".join(sources),
            pd.concat(unmatched, ignore_index=True) if unmatched else None,
        )  # fmt: skip


def pool_members(
    datasets: Mapping[str, Any], members: Sequence[str] | None
) -> tuple[dict[str, Any], list[str] | None]:
    """``datasets`` narrowed to ``members`` (in the members' order; None: all), each member's
    ``root`` given: a ``DataError`` names a member that is not a dataset, or has no root."""
    if members is None:
        return dict(datasets), None
    if isinstance(members, str) or not isinstance(members, Sequence):
        raise DataError(f"data.members={members!r}: give a list, e.g. data.members=[nih,padchest]")
    members = [str(m) for m in members]
    unknown = [m for m in members if m not in datasets]
    if unknown or not members:
        raise DataError(
            f"data.members={members}: "
            + (f"{unknown} not among" if unknown else "no member; name some of")
            + f" the datasets {sorted(datasets)}, e.g. data.members=[nih,padchest,vindr_cxr]"
        )
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise DataError(f"data.members={members} names {repeated} twice; name each dataset once")
    unrooted = [m for m in members if not (datasets[m] or {}).get("root")]
    if unrooted:
        raise DataError(
            "no folder given for the pooled dataset(s) "
            + ", ".join(unrooted)
            + ": give "
            + " ".join(f"data.datasets.{m}.root=<its folder>" for m in unrooted)
        )
    return {m: datasets[m] for m in members}, members


def member_label_names(member: ChestXrayDataModule) -> list[str]:
    """``member.pathologies`` with its own spellings of another dataset's labels renamed to
    them (``label_spellings``: output name → this dataset's label, e.g. VinDr-CXR's
    ``Effusion: Pleural effusion``); its other labels as they are."""
    spellings = getattr(member, "label_spellings", None) or {}
    rename = {label: output for output, label in spellings.items()}
    return [rename.get(name, name) for name in member.pathologies]


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
