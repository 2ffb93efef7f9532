"""PromptSource template rendering and the evaluation task registry.

Tests marked with the `data_root` fixture need the real data (../shared/data or
$CTR_DATA_DIR) and skip without it; the rest build tiny fixtures in tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctr.tasks.registry import (
    DATA_ENV_VAR,
    EvalTask,
    data_dir,
    get_task,
    list_tasks,
    load_examples,
    render_prompts,
    render_task,
    select_templates,
    task_templates,
    usable_templates,
)
from ctr.tasks.templates import (
    PromptTemplate,
    RenderError,
    SkipReason,
    render_dataset,
)
from ctr.tasks.template_files import TemplateLoadError, load_templates

N_EXAMPLES = 50  # keeps the file fast; counts below were checked on the full splits too

# task -> (usable original_task templates, choices per example)
EXPECTED = {
    "anli_r1": (15, 3),
    "anli_r2": (15, 3),
    "anli_r3": (15, 3),
    "super_glue_cb": (15, 3),
    "super_glue_copa": (12, 2),
    "super_glue_rte": (10, 2),
    "super_glue_wic": (10, 2),
    "super_glue_wsc.fixed": (10, 2),
    "winogrande_winogrande_xl": (5, 2),  # 6th template ("True or False") is not original_task
    "hellaswag": (3, 4),  # complete_first_then needs ctx_a/ctx_b, which the data lacks
    "story_cloze_2016": (5, 2),
    "glue_sst2": (5, 2),
    "trec": (7, None),  # 5 coarse (6 choices) + 2 fine-grained (47 choices)
    "ag_news": (7, 4),
}
T0_TASKS = [name for name in EXPECTED if get_task(name).suite == "t0"]


@pytest.fixture(scope="module")
def data_root() -> Path:
    try:
        return data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"real task data not available ({exc})")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _template(jinja: str, choices: str | None = "No ||| Yes", name: str = "t") -> PromptTemplate:
    return PromptTemplate(name=name, id=f"id-{name}", jinja=jinja, answer_choices_jinja=choices,
                          original_task=True, choices_in_prompt=False)


# ------------------------------------------------------------------ real data


def test_registry_covers_the_eleven_held_out_datasets(data_root: Path) -> None:
    assert [t.name for t in list_tasks("t0")] == T0_TASKS
    assert len(T0_TASKS) == 11
    assert [t.name for t in list_tasks("near")] == ["glue_sst2", "trec", "ag_news"]
    for task in list_tasks():
        assert (data_root / task.data_folder / task.eval_split).is_file(), task.name
        assert (data_root / task.template_path / "templates.yaml").is_file(), task.name
        if task.train_split:
            assert (data_root / task.data_folder / task.train_split).is_file(), task.name


@pytest.mark.parametrize("name", list(EXPECTED))
def test_usable_original_templates(name: str, data_root: Path) -> None:
    n_usable, n_choices = EXPECTED[name]
    task = get_task(name)
    examples = load_examples(task, max_examples=N_EXAMPLES, seed=None)
    report = usable_templates(task, examples=examples)
    assert len(report.usable) == n_usable, report.summary()
    assert all(t.original_task for t in report.usable)
    for template in report.usable:
        instances, skipped = render_task(task, template, examples)
        assert instances, template.name
        assert set(skipped) <= {SkipReason.EMPTY_INPUT}, (template.name, skipped.summary())
        for inst in instances:
            if n_choices is not None:
                assert len(inst.prompt.choices) == n_choices, template.name
            assert 0 <= inst.label_index < len(inst.prompt.choices)
            assert inst.prompt.input_text


@pytest.mark.parametrize("name", ["super_glue_rte", "hellaswag", "winogrande_winogrande_xl", "story_cloze_2016"])
def test_every_target_is_one_of_the_choices(name: str, data_root: Path) -> None:
    task = get_task(name)
    examples = load_examples(task, max_examples=N_EXAMPLES, seed=None)
    for template in usable_templates(task, examples=examples).usable:
        rendered, _ = render_dataset(template, [ex.full_fields() for ex in examples])
        assert rendered
        for r in rendered:
            assert r.target_text in r.choices and r.choices[r.label_index] == r.target_text


def test_gold_choice_follows_the_dataset_label(data_root: Path) -> None:
    # Checks the label conventions: 0-based for SuperGLUE, "1"/"2" for WinoGrande,
    # 1/2 for StoryCloze, HF-string labels for HellaSwag.
    cases = {
        "super_glue_rte": lambda ex: ex.label,
        "super_glue_copa": lambda ex: ex.label,
        "winogrande_winogrande_xl": lambda ex: int(ex.label) - 1,
        "story_cloze_2016": lambda ex: ex.label - 1,
        "hellaswag": lambda ex: int(ex.label),
    }
    for name, gold in cases.items():
        task = get_task(name)
        examples = load_examples(task, max_examples=20, seed=None)
        by_index = {ex.index: ex for ex in examples}
        template = usable_templates(task, examples=examples).usable[0]
        instances, _ = render_task(task, template, examples)
        assert [i.label_index for i in instances] == [gold(by_index[i.index]) for i in instances], name


def test_hellaswag_templates_needing_ctx_a_are_skipped(data_root: Path) -> None:
    examples = load_examples("hellaswag", max_examples=10, seed=None)
    assert isinstance(examples[0].label, str)  # restored to the HF type the templates expect
    report = usable_templates("hellaswag", examples=examples)
    skipped = {s.name: s.skipped for s in report.skipped}
    assert set(skipped) == {"complete_first_then"}
    assert skipped["complete_first_then"][SkipReason.MISSING_FIELD] == 10
    assert "ctx_a" in skipped["complete_first_then"].details[SkipReason.MISSING_FIELD]


def test_all_templates_report_reasons(data_root: Path) -> None:
    # Non-original templates exercise the other failure kinds on real data.
    hs = usable_templates("hellaswag", original_only=False, max_examples=5)
    reasons = {s.name: set(s.skipped) for s in hs.skipped}
    assert reasons["Topic of the context"] == {SkipReason.NO_ANSWER_CHOICES}
    assert reasons["Reversed appropriate continuation - Yes or No"] == {SkipReason.MISSING_FIELD}
    trec = usable_templates("trec", original_only=False, max_examples=20)
    # TREC's fine_grained_<CLASS> templates only render when label_coarse is CLASS:
    # choosing the prompt by the label is a leak.
    leaks = [s.name for s in trec.skipped if set(s.skipped) == {SkipReason.LABEL_LEAK}]
    assert len(leaks) == 11 and all(n.startswith("fine_grained_") for n in leaks)


def test_copa_conditional_templates_skip_examples_not_templates(data_root: Path) -> None:
    examples = load_examples("super_glue_copa", max_examples=N_EXAMPLES, seed=None)
    report = usable_templates("super_glue_copa", examples=examples)
    # Four templates apply to only "cause" or only "effect" questions.
    assert len(report.partial) == 4
    n_effect = sum(ex.fields["question"] == "effect" for ex in examples)
    for name, skipped in report.partial.items():
        assert set(skipped) == {SkipReason.EMPTY_INPUT}
        assert skipped[SkipReason.EMPTY_INPUT] in (n_effect, len(examples) - n_effect), name


def test_trec_fine_labels_are_remapped_to_promptsource_order(data_root: Path) -> None:
    examples = load_examples("trec", max_examples=5, seed=None)
    # "How far is it from Denver to Aspen ?" is NUM:dist.
    assert examples[0].fields["text"].startswith("How far")
    (template,) = select_templates(task_templates("trec"), ["fine_grained_open"])
    instances, _ = render_task("trec", template, examples[:1])
    assert instances[0].prompt.choices[instances[0].label_index] == "Distance"


def test_unlabeled_rendering_never_sees_labels(data_root: Path) -> None:
    task = get_task("anli_r1")
    examples = load_examples(task, max_examples=10, seed=None)
    assert all("label" not in ex.fields and "reason" not in ex.fields for ex in examples)
    template = usable_templates(task, examples=examples).usable[0]
    labeled, _ = render_task(task, template, examples)
    blind = render_prompts(template, examples)
    assert [(i.index, i.prompt) for i in labeled] == blind


def test_randomized_template_is_deterministic_per_example(data_root: Path) -> None:
    (template,) = select_templates(task_templates("hellaswag"), ["Randomized prompts template"])
    examples = load_examples("hellaswag", max_examples=30, seed=None)
    first = render_prompts(template, examples)
    assert render_prompts(template, list(reversed(examples)))[::-1] == first
    openings = {p.input_text.split("\n")[0] for _, p in first}
    assert len(openings) > 1  # the `choice` filter really varies across examples


def test_load_examples_subsample_is_seeded_with_stable_indices(data_root: Path) -> None:
    a = load_examples("super_glue_rte", max_examples=20, seed=1)
    b = load_examples("super_glue_rte", max_examples=20, seed=1)
    c = load_examples("super_glue_rte", max_examples=20, seed=2)
    full = load_examples("super_glue_rte")
    assert [e.index for e in a] == [e.index for e in b] != [e.index for e in c]
    assert len(full) == 277
    for ex in a:
        assert full[ex.index].full_fields() == ex.full_fields()
    assert len(load_examples("super_glue_rte", "train")) == 2490
    with pytest.raises(ValueError, match="no train split"):
        load_examples("story_cloze_2016", "train")


def test_unknown_template_name_lists_available(data_root: Path) -> None:
    with pytest.raises(ValueError, match="available") as err:
        usable_templates("super_glue_rte", names=["no such template"])
    assert "GPT-3 style" in str(err.value)
    report = usable_templates("super_glue_rte", names=["GPT-3 style", "can we infer"], max_examples=5)
    assert [t.name for t in report.usable] == ["GPT-3 style", "can we infer"]


# ------------------------------------------------------------------ no data needed


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid tasks") as err:
        get_task("super_glue_boolq")
    assert "super_glue_rte" in str(err.value) and "story_cloze_2016" in str(err.value)
    with pytest.raises(ValueError, match="valid suites"):
        list_tasks("bigbench")


def test_missing_data_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        data_dir(missing)
    assert str(missing) in str(err.value) and DATA_ENV_VAR in str(err.value)
    monkeypatch.setenv(DATA_ENV_VAR, str(missing))
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        data_dir()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_examples("super_glue_rte")
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert data_dir() == tmp_path.resolve()


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "templates.yaml", "templates:\n  a: !Template\n    jinja: 'unclosed\n  b: [\n")
    with pytest.raises(TemplateLoadError) as err:
        load_templates(tmp_path)
    assert str(bad) in str(err.value) and "line" in str(err.value)
    _write(tmp_path / "templates.yaml", "dataset: x\ntemplates:\n  a: !Template\n    name: a\n")
    with pytest.raises(TemplateLoadError, match="lacks"):
        load_templates(tmp_path / "templates.yaml")


def test_missing_field_template_is_skipped_with_reason(tmp_path: Path) -> None:
    # A miniature data dir: one task with a good template and one that reads a field
    # the data does not have.
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2, "idx": i} for i in range(6)]
    _write(tmp_path / "t0_eval/super_glue_rte/validation.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    _write(tmp_path / "templates/super_glue/rte/templates.yaml", """\
dataset: super_glue
subset: rte
templates:
  id-good: !Template
    answer_choices: Yes ||| No
    id: id-good
    jinja: '{{premise}} Does that mean {{hypothesis}}? ||| {{answer_choices[label]}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics: [Accuracy]
      original_task: true
    name: good
    reference: ''
  id-bad: !Template
    answer_choices: Yes ||| No
    id: id-bad
    jinja: '{{premise}} {{ context_a }} ||| {{answer_choices[label]}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics: [Accuracy]
      original_task: true
    name: bad
    reference: ''
""")
    report = usable_templates("super_glue_rte", root=tmp_path)
    assert [t.name for t in report.usable] == ["good"]
    (skip,) = report.skipped
    assert skip.name == "bad" and skip.skipped[SkipReason.MISSING_FIELD] == 6
    assert "context_a" in str(skip)
    instances, _ = render_task("super_glue_rte", report.usable[0], load_examples("super_glue_rte", root=tmp_path))
    assert [i.label_index for i in instances] == [r["label"] for r in rows]


@pytest.mark.parametrize(
    ("jinja", "choices", "reason"),
    [
        ("{{ text }} ||| {{ answer_choices[label] }}", None, SkipReason.NO_ANSWER_CHOICES),
        ("{{ text }} {{ missing }} ||| {{ answer_choices[label] }}", "No ||| Yes", SkipReason.MISSING_FIELD),
        ("{% if label == 5 %}{{ text }} ||| Yes{% endif %}", "No ||| Yes", SkipReason.EMPTY_INPUT),
        ("{{ text }} ||| Maybe", "No ||| Yes", SkipReason.TARGET_NOT_IN_CHOICES),
        ("{{ text }} ||| ", "No ||| Yes", SkipReason.EMPTY_TARGET),
        ("{{ text }} ||| {{ answer_choices[label] }} ||| x", "No ||| Yes", SkipReason.BAD_SEPARATOR),
        ("{{ text }} ||| {{ answer_choices[label + 5] }}", "No ||| Yes", SkipReason.RENDER_ERROR),
        ("{{ text }} ||| {{ answer_choices[label] }}", "No ||| {{ other }}", SkipReason.EMPTY_CHOICE),
    ],
)
def test_render_failures_are_typed(jinja: str, choices: str | None, reason: SkipReason) -> None:
    example = {"text": "hello", "label": 1, "other": ""}
    with pytest.raises(RenderError) as err:
        _template(jinja, choices).render(example)
    assert err.value.reason is reason
    _, skipped = render_dataset(_template(jinja, choices), [example, example])
    assert skipped == {reason: 2}


def test_label_read_in_the_input_is_a_leak() -> None:
    leaky = _template("{{ text }} (hint: {{ label }}) ||| {{ answer_choices[label] }}")
    example = {"text": "hello", "label": 1}
    assert leaky.render(example).label_index == 1  # renders fine with labels visible...
    with pytest.raises(RenderError) as err:  # ...but not with the label hidden
        leaky.render_input_and_choices(example, hidden_fields=["label"])
    assert err.value.reason is SkipReason.LABEL_LEAK
    _, skipped = render_dataset(leaky, [example], hidden_fields=["label"])
    assert skipped == {SkipReason.LABEL_LEAK: 1}
    clean = _template("{{ text }} ||| {{ answer_choices[label] }}")
    assert clean.render_input_and_choices(example, hidden_fields=["label"]) == clean.render(example).prompt


@pytest.mark.parametrize(
    ("jinja", "choices"),
    [
        ("{{ ''.__class__.__mro__ }} {{ text }} ||| {{ answer_choices[label] }}", "No ||| Yes"),
        ("{{ text.__class__.__mro__[1].__subclasses__() }} ||| {{ answer_choices[label] }}", "No ||| Yes"),
        ("{{ text }} ||| {{ answer_choices[label] }}", "{{ cycler.__init__.__globals__ }} ||| Yes"),
        ("{{ text.format.__globals__ }} ||| {{ answer_choices[label] }}", "No ||| Yes"),
    ],
)
def test_templates_cannot_reach_python_internals(jinja: str, choices: str) -> None:
    """Template files are downloaded data: they render in a sandbox, and an attempt to
    reach Python internals is a typed failure naming the template, never rendered."""
    template = _template(jinja, choices, name="evil one")
    example = {"text": "hello", "label": 1}
    with pytest.raises(RenderError) as err:
        template.render(example)
    assert err.value.reason is SkipReason.UNSAFE_TEMPLATE
    assert "evil one" in str(err.value) and "unsafe" in str(err.value)
    with pytest.raises(RenderError) as err:  # the label-free path too
        template.render_input_and_choices(example, hidden_fields=["label"])
    assert err.value.reason is SkipReason.UNSAFE_TEMPLATE and "evil one" in str(err.value)
    _, skipped = render_dataset(template, [example, example], hidden_fields=["label"])
    assert skipped == {SkipReason.UNSAFE_TEMPLATE: 2}


def test_sandbox_keeps_the_promptsource_helpers() -> None:
    """zip, choice, most_frequent, list methods and loops still work in the sandbox."""
    template = _template(
        "{% set acc = [] %}{% for a, b in zip(xs, ys) %}{{ acc.append(a ~ b) or '' }}{% endfor %}"
        "{{ acc | join(',') }} {{ xs | most_frequent | first }} {{ [text] | choice }}"
        "{% for i in range(2) %}.{% endfor %} {{ text.upper() }} ||| {{ answer_choices[label] }}")
    r = template.render({"xs": ["a", "a", "b"], "ys": ["1", "2", "3"], "text": "hi", "label": 1})
    assert r.input_text == "a1,a2,b3 a hi.. HI" and r.target_text == "Yes"


def test_pipes_in_fields_and_choice_filter_match_promptsource() -> None:
    template = _template(
        "{{ ['A', 'B', 'C'] | choice }}: {{ text }} ||| {{ answer_choices[label] }}",
        choices="{{ opt1 }} ||| {{ opt2 }}",
    )
    example = {"text": "a ||| b", "opt1": " x ", "opt2": "z", "label": 0}
    r = template.render(example, seed=3)
    assert r.input_text.endswith(": a ||| b")  # "|||" inside a field is not a separator
    assert r.choices == ("x", "z") and r.label_index == 0 and r.target_text == "x"
    assert template.render(example, seed=3) == r
    # As in PromptSource, choices are unescaped before the template uses them, so a
    # choice containing "|||" breaks the split: reported, not rendered wrong.
    with pytest.raises(RenderError) as err:
        template.render({**example, "opt1": "x|||y"})
    assert err.value.reason is SkipReason.BAD_SEPARATOR
    long = template.render({**example, "text": "w " * 2000}, seed=3).input_text
    assert long.endswith("...") and len(long) < 2100  # PromptSource's 2048-char truncation


def test_load_templates_reads_custom_tags(tmp_path: Path) -> None:
    _write(tmp_path / "templates.yaml", """\
dataset: demo
templates:
  abc: !Template
    answer_choices: null
    id: abc
    jinja: 'Summarize: {{text}} ||| {{summary}}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      metrics: [ROUGE]
      original_task: false
    name: summarize
    reference: ''
""")
    (t,) = load_templates(tmp_path)
    assert (t.name, t.id, t.answer_choices_jinja, t.original_task, t.metrics) == ("summarize", "abc", None, False, ("ROUGE",))
    assert t.source.endswith("templates.yaml") and t.dataset == "demo"


def test_eval_task_split_names() -> None:
    task = get_task("winogrande_winogrande_xl")
    assert isinstance(task, EvalTask) and task.label_field == "answer"
    assert task.split_file("train") == "train_debiased.jsonl"
    with pytest.raises(ValueError, match="unknown split"):
        task.split_file("test")
