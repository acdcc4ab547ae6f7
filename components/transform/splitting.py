"""Split the examples table into train / validation / test without leaks.

Rows are first joined into groups: two rows are in one group when they share a `record_id`
(the tasks of one ticket) or a normalised-text key (the same query worded the same way twice),
transitively (union-find over both). A group is never cut across splits, so no text and no
record appears in two splits; `split_examples` checks this before it returns.

Groups are then allocated per label, not with sklearn's `StratifiedShuffleSplit`: that class
raises on a class with a single member and, rounding with a hypergeometric mode, may give a rare
class no test member at all. The per-label allocation shuffles each label's groups with the
seed and gives every split at least one group whenever the label has at least as many groups
as there are splits to fill (3, or 2 with a user test set), then follows the ratios.

A group's label is the (task, target) of its first row in the first label task present, in
the fixed order of `schemas.examples.LABEL_TASKS`; groups with only free-text rows form one
stratum per free-text task. The other label tasks of a group (a ticket's priority beside its
product) are then covered by swapping groups of one stratum between splits, so they too reach
every split whenever they have enough groups (`_cover_secondary_labels`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import pandas as pd

from schemas.examples import LABEL_TASKS

SPLITS: tuple[str, ...] = ("train", "validation", "test")
_NON_WORD = re.compile(r"[^\w]+")


def normalised_text_key(text: str) -> str:
    """Case-, accent-, punctuation- and spacing-insensitive key of a text, for leak checks."""
    folded = (
        unicodedata.normalize("NFKD", str(text))
        .encode("ascii", "ignore")
        .decode("ascii")
    )
    return _NON_WORD.sub(" ", folded.lower()).strip()


def split_examples(
    df: pd.DataFrame,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    key_column: str = "text_key",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign every row a `split`; return `(split_df, leaked_df)`.

    `key_column` holds the normalised text; when the column is absent it is computed from
    `text` with `normalised_text_key`. Rows whose `split` is already "test" are a user test
    set: they stay in test, the remaining rows are split into train and validation in the
    ratio `ratios[0] : ratios[1]`, and any remaining row grouped with a test row (same text
    key or record) is removed and returned in `leaked_df` with `reason="duplicate_of_test"`
    (the caller quarantines it). Other values in an existing `split` column are reassigned.
    Without a user test set `leaked_df` is empty. Same input and seed give the same split.
    """
    ratios = _checked_ratios(ratios)
    df = df.reset_index(drop=True).copy()
    if key_column not in df.columns:
        df[key_column] = df["text"].map(normalised_text_key)
    user_test = (
        (df["split"] == "test").to_numpy()
        if "split" in df.columns
        else np.zeros(len(df), bool)
    )

    group_of_row = _group_rows(
        df["record_id"].astype(str).to_numpy(), df[key_column].astype(str).to_numpy()
    )
    test_groups = set(group_of_row[user_test])
    in_test_group = np.isin(group_of_row, list(test_groups))
    leaked_mask = in_test_group & ~user_test
    leaked_df = (
        df[leaked_mask].assign(reason="duplicate_of_test").reset_index(drop=True)
    )
    if leaked_df.empty:
        leaked_df = df.iloc[0:0].assign(reason=pd.Series(dtype=object))

    pool = ~in_test_group
    if user_test.any():
        # The user's test set replaces the test share; split what is left in train:validation.
        pool_ratios = np.array([ratios[0], ratios[1], 0.0]) / (ratios[0] + ratios[1])
    else:
        pool_ratios = np.asarray(ratios)
    split_of_group = _allocate_groups(df[pool], group_of_row[pool], pool_ratios, seed)

    df["split"] = [
        "test" if is_test else split_of_group.get(group)
        for group, is_test in zip(group_of_row, user_test)
    ]
    split_df = df[~leaked_mask].reset_index(drop=True)
    _check_no_leaks(split_df, key_column)
    if len(split_df) + len(leaked_df) != len(df):
        raise AssertionError("splitting lost rows")
    return split_df, leaked_df


def _checked_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if (
        len(ratios) != 3
        or any(r < 0 for r in ratios)
        or not np.isclose(sum(ratios), 1.0)
    ):
        raise ValueError(
            f"ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}"
        )
    if ratios[0] <= 0:
        raise ValueError(f"the train ratio must be positive, got {ratios[0]}")
    return tuple(float(r) for r in ratios)


def _group_rows(record_ids: np.ndarray, text_keys: np.ndarray) -> np.ndarray:
    """Group number per row: connected components of 'same record_id' or 'same text key'."""
    parent = list(range(len(record_ids)))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps trees shallow
            node = parent[node]
        return node

    for values in (record_ids, text_keys):
        first_row_with: dict[str, int] = {}
        for row, value in enumerate(values):
            first = first_row_with.setdefault(value, row)
            root_a, root_b = find(first), find(row)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([find(row) for row in range(len(record_ids))], dtype=np.int64)


def _group_strata(pool: pd.DataFrame, groups: np.ndarray) -> dict[int, str]:
    """Stratum per group: its first label task's 'task=target', else its free-text task."""
    task_rank = {task: rank for rank, task in enumerate(LABEL_TASKS)}
    frame = pd.DataFrame(
        {
            "group": groups,
            "rank": pool["task"].map(task_rank).fillna(len(LABEL_TASKS)).to_numpy(),
            "order": np.arange(len(pool)),
            "stratum": np.where(
                pool["task"].isin(LABEL_TASKS),
                pool["task"] + "=" + pool["target"].astype(str),
                pool["task"],
            ),
        }
    )
    first = frame.sort_values(["group", "rank", "order"]).drop_duplicates("group")
    return dict(zip(first["group"], first["stratum"]))


def _allocation_counts(n_groups: int, ratios: np.ndarray) -> np.ndarray:
    """How many of a label's groups each split gets (sums to n_groups)."""
    active = ratios > 0
    counts = np.floor(n_groups * ratios + 0.5).astype(int)  # round half up, not to even
    if n_groups >= active.sum():
        counts[active] = np.maximum(
            counts[active], 1
        )  # every split sees every label it can
    else:
        counts[:] = 0
    # Train absorbs the rounding difference; if it went below one, take from the largest other.
    counts[0] = n_groups - counts[1:].sum()
    while counts[0] < min(1, n_groups):
        donor = 1 + int(np.argmax(counts[1:]))
        counts[donor] -= 1
        counts[0] += 1
    return counts


def _allocate_groups(
    pool: pd.DataFrame, groups: np.ndarray, ratios: np.ndarray, seed: int
) -> dict[int, str]:
    """Split name per group, allocated label by label in a seeded, deterministic order."""
    strata = _group_strata(pool, groups)
    groups_by_stratum: dict[str, list[int]] = {}
    for group in sorted(strata):  # group numbers follow row order: deterministic
        groups_by_stratum.setdefault(strata[group], []).append(group)
    rng = np.random.default_rng(seed)
    split_of_group: dict[int, str] = {}
    for stratum in sorted(groups_by_stratum):
        members = np.array(groups_by_stratum[stratum])
        members = members[rng.permutation(len(members))]
        counts = _allocation_counts(len(members), ratios)
        for split, chunk in zip(SPLITS, np.split(members, np.cumsum(counts)[:-1])):
            split_of_group.update(dict.fromkeys(chunk.tolist(), split))
    _cover_secondary_labels(pool, groups, strata, split_of_group, ratios, rng)
    return split_of_group


def _cover_secondary_labels(pool: pd.DataFrame, groups: np.ndarray, strata: dict[int, str],
                            split_of_group: dict[int, str], ratios: np.ndarray, rng: np.random.Generator) -> None:
    """Swap groups of one stratum between splits until every label of every label task is in
    every split that can hold it (its label has a group per split), where a swap can do it.

    Stratifying by the first label task leaves the others (a ticket's priority beside its
    product) to chance: with a few hundred records a priority could miss a split. A swap
    exchanges two groups of the same stratum, so the per-stratum allocation is unchanged, and is
    made only when no label loses its last group in either split.
    """
    active = [split for split, ratio in zip(SPLITS, ratios) if ratio > 0]
    is_label = pool["task"].isin(LABEL_TASKS).to_numpy()
    keys = (pool["task"] + "=" + pool["target"].astype(str)).to_numpy()
    labels_of: dict[int, set[str]] = {}
    for group, key in zip(groups[is_label].tolist(), keys[is_label].tolist()):
        labels_of.setdefault(group, set()).add(key)
    count: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for group, labels in labels_of.items():
        split_count = count[split_of_group[group]]
        for label in labels:
            split_count[label] = split_count.get(label, 0) + 1
    missing = sorted({label for labels in labels_of.values() for label in labels
                      if any(not count[split].get(label) for split in active)})
    if not missing:
        return

    def keeps_labels(split: str, leaving: int, arriving: int) -> bool:
        return all(count[split][label] > 1 or label in labels_of.get(arriving, ()) for label in labels_of[leaving])

    def move(group: int, source: str, target: str) -> None:
        split_of_group[group] = target
        for label in labels_of.get(group, ()):
            count[source][label] -= 1
            count[target][label] = count[target].get(label, 0) + 1

    ordered = sorted(labels_of)
    ordered = [ordered[i] for i in rng.permutation(len(ordered))]
    for label in missing:
        holders = [group for group in ordered if label in labels_of[group]]
        if len(holders) < len(active):
            continue  # too few groups to cover every split: stays out of some, as for the first task
        for target in active:
            if count[target].get(label):
                continue
            swap = next(((group, other) for group in holders
                         if count[split_of_group[group]][label] > 1
                         for other in ordered
                         if split_of_group[other] == target and strata[other] == strata[group]
                         and keeps_labels(split_of_group[group], group, other)
                         and keeps_labels(target, other, group)), None)
            if swap is not None:
                group, other = swap
                source = split_of_group[group]
                move(group, source, target)
                move(other, target, source)


def _check_no_leaks(df: pd.DataFrame, key_column: str) -> None:
    """Raise when a text key or a record id appears in more than one split."""
    if df["split"].isna().any():
        raise AssertionError("some rows were not assigned a split")
    for column in (key_column, "record_id"):
        splits_per_value = df.groupby(column)["split"].nunique()
        leaking = splits_per_value[splits_per_value > 1]
        if len(leaking):
            raise AssertionError(
                f"{len(leaking)} values of {column!r} appear in several splits, e.g. {leaking.index[0]!r}"
            )
