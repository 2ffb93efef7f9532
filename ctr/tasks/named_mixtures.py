"""Named training mixtures: task lists that several commands, scripts and releases share.

`NEAR20` is every T0-sample template of three short-input datasets, one per task type:
sentiment (`amazon_polarity_*`, 9), topic (`ag_news_*`, 7) and paraphrase (`glue_qqp_*`, 4).
It trains the released `smollm2-near20-s1`, the evidence run (`scripts/evidence_smollm2.sh`)
and the CPU recipe of `results/stage1_cpu_recipe/`; SST-2 and TREC, the near suite's other
tasks, stay out of it. Names are in the order the runs used (sorted), which fixes task ids.

    python -m ctr.tasks.named_mixtures near20      # the names on one line, for shell scripts
"""
from __future__ import annotations

import argparse

NEAR20: tuple[str, ...] = (
    "ag_news_classify", "ag_news_classify_question_first", "ag_news_classify_with_choices",
    "ag_news_classify_with_choices_question_first", "ag_news_recommend", "ag_news_which_section",
    "ag_news_which_section_choices",
    "amazon_polarity_Is_this_product_review_positive", "amazon_polarity_Is_this_review",
    "amazon_polarity_Is_this_review_negative", "amazon_polarity_User_recommend_this_product",
    "amazon_polarity_convey_negative_or_positive_sentiment", "amazon_polarity_flattering_or_not",
    "amazon_polarity_negative_or_positive_tone", "amazon_polarity_user_satisfied",
    "amazon_polarity_would_you_buy",
    "glue_qqp_answer", "glue_qqp_duplicate", "glue_qqp_duplicate_or_not", "glue_qqp_meaning",
)

MIXTURES: dict[str, tuple[str, ...]] = {"near20": NEAR20}


def mixture(name: str) -> list[str]:
    """The task names of a named mixture; an unknown name is an error listing the known ones."""
    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; known: {', '.join(sorted(MIXTURES))}")
    return list(MIXTURES[name])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="print the task names of a named mixture")
    ap.add_argument("name", choices=sorted(MIXTURES))
    print(" ".join(mixture(ap.parse_args(argv).name)))


if __name__ == "__main__":
    main()
