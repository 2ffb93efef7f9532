"""PromptSource (0.2.3) templates rendered with Jinja2, in a sandbox.

PromptSource itself does not install on Python 3.10+, so this module re-implements the
parts of ``promptsource.templates.Template`` we need: the Jinja environment
(``choice``/``most_frequent``/``highlight`` filters, ``zip`` global), the ``|||``
protection of example fields, variable truncation, and the split of the rendered text
into input and target. Reading the YAML files is ``ctr.tasks.template_files``.

Two deliberate differences, both to fail loudly instead of rendering something wrong:

* ``StrictUndefined``: PromptSource renders a missing field as ``""``; here it is a
  ``SkipReason.MISSING_FIELD`` failure (e.g. HellaSwag templates that need ``ctx_a``).
* ``choice`` draws from a per-render RNG seeded by (template id, caller's seed) instead of
  the global ``random`` state, so a rendering is reproducible and does not depend on
  the order examples are rendered in.

Template files are data a user may download, so they render in Jinja2's
``SandboxedEnvironment``: a template that reaches for Python internals (``__class__``,
``__globals__``, ...) fails with ``SkipReason.UNSAFE_TEMPLATE`` naming the template,
instead of running.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import jinja2.sandbox

SEPARATOR = "|||"
# PromptSource truncates every substituted variable to this many characters.
TEXT_VAR_LENGTH = 2048
# PromptSource swaps "|||" inside example strings for this token while rendering.
PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"
_RNG_KEY = "__ctr_rng__"  # context entry holding the per-render RNG for `choice`


class SkipReason(str, Enum):
    """Why an example (or a whole template) could not be rendered for rank classification."""

    MISSING_FIELD = "missing_field"  # template reads a field the example lacks
    NO_ANSWER_CHOICES = "no_answer_choices"  # generation template: nothing to rank
    EMPTY_INPUT = "empty_input"  # e.g. a conditional template not applicable here
    EMPTY_TARGET = "empty_target"  # e.g. unlabeled row (label -1)
    EMPTY_CHOICE = "empty_choice"
    TARGET_NOT_IN_CHOICES = "target_not_in_choices"
    AMBIGUOUS_TARGET = "ambiguous_target"  # target equals several choices
    BAD_SEPARATOR = "bad_separator"  # not exactly one "|||" in the output
    LABEL_LEAK = "label_leak"  # input/choices need a hidden (label) field
    UNSAFE_TEMPLATE = "unsafe_template"  # the sandbox refused an access (Python internals)
    RENDER_ERROR = "render_error"  # any other Jinja/Python error

    def __str__(self) -> str:
        return self.value


class RenderError(Exception):
    """A typed rendering failure: ``reason`` is a SkipReason, ``detail`` is for humans."""

    def __init__(self, reason: SkipReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class SkipCounter(Counter):
    """Counter of SkipReason -> count that also keeps the first detail seen per reason."""

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[SkipReason, str] = {}

    def add(self, err: RenderError) -> None:
        self[err.reason] += 1
        self.details.setdefault(err.reason, err.detail)

    def summary(self) -> str:
        parts = []
        for reason, n in self.most_common():
            detail = self.details.get(reason)
            parts.append(f"{reason.value} x{n}" + (f" ({detail})" if detail else ""))
        return "; ".join(parts)


@dataclass(frozen=True)
class PromptedInput:
    """What a model may see: the prompt and the candidate answers, no label."""

    input_text: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class RenderedExample:
    """A full rendering; the gold answer lives only in ``target_text``/``label_index``."""

    input_text: str
    target_text: str
    choices: tuple[str, ...]
    label_index: int
    key: Any = None  # the seed/stable example index it was rendered with

    @property
    def prompt(self) -> PromptedInput:
        return PromptedInput(self.input_text, self.choices)


# ---------------------------------------------------------------- Jinja environment


@jinja2.pass_context
def _choice(context: jinja2.runtime.Context, choices: Sequence[Any]) -> Any:
    rng = context.get(_RNG_KEY)
    if rng is None:  # rendering outside PromptTemplate: keep it deterministic anyway
        rng = random.Random(0)
    return rng.choice(list(choices))


def _most_frequent(items: Sequence[Any]) -> list[Any] | None:
    if not items:
        return None
    counts = Counter(items).most_common()
    return [item for item, n in counts if n == counts[0][1]]


def _highlight(text: str) -> str:
    return "<span style='color: #F08080'>" + text + "</span>"


def _make_env() -> jinja2.Environment:
    # Sandboxed: templates are downloaded data and must not reach Python internals.
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.globals["zip"] = zip
    env.filters["choice"] = _choice
    env.filters["most_frequent"] = _most_frequent
    env.filters["highlight"] = _highlight
    return env


_ENV = _make_env()


@lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def _escape_pipes(example: Mapping[str, Any]) -> dict[str, Any]:
    # Like PromptSource: only top-level strings are protected (lists are left as is).
    return {
        k: v.replace(SEPARATOR, PIPE_PROTECTOR) if isinstance(v, str) else v
        for k, v in example.items()
    }


def _unescape(text: str) -> str:
    return text.replace(PIPE_PROTECTOR, SEPARATOR)


_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")


def _undefined_error(exc: jinja2.UndefinedError) -> RenderError:
    # "'x' is undefined" / "has no attribute" = a field the data lacks; "list object has
    # no element 49" = an index out of range, i.e. data and template disagree on values.
    message = exc.message or str(exc)
    if _UNDEFINED_NAME.search(message) or "has no attribute" in message:
        return RenderError(SkipReason.MISSING_FIELD, message)
    return RenderError(SkipReason.RENDER_ERROR, message)


# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    id: str
    jinja: str
    answer_choices_jinja: str | None
    original_task: bool
    choices_in_prompt: bool | None
    metrics: tuple[str, ...] = ()
    reference: str = ""
    source: str = ""  # the templates.yaml it came from, for messages
    dataset: str = field(default="", compare=False)

    @property
    def has_choices(self) -> bool:
        return self.answer_choices_jinja is not None

    # -- public API ------------------------------------------------------------

    def render(self, example: Mapping[str, Any], seed: Any = 0, truncate: bool = True) -> RenderedExample:
        """Render input, target and choices; raises RenderError instead of guessing.

        ``seed`` feeds the ``choice`` filter; pass a stable per-example key (the example's
        index) so the same example always gets the same prompt.
        """
        rng = self._rng(seed)
        context = self._context(example, rng)
        parts = self._split(self._run(self._compile_body(truncate), context))
        if len(parts) != 2:
            raise RenderError(
                SkipReason.BAD_SEPARATOR, f"expected one '{SEPARATOR}', output has {len(parts) - 1}"
            )
        input_text, target = parts
        choices = context["answer_choices"]
        self._check_input(input_text, choices)
        if not target:
            raise RenderError(SkipReason.EMPTY_TARGET, "target rendered empty")
        hits = [i for i, c in enumerate(choices) if c == target]
        if not hits:
            raise RenderError(SkipReason.TARGET_NOT_IN_CHOICES, f"target {target!r} not in {choices!r}")
        if len(hits) > 1:
            raise RenderError(SkipReason.AMBIGUOUS_TARGET, f"target {target!r} is choice {hits}")
        return RenderedExample(input_text, target, tuple(choices), hits[0], key=seed)

    def render_input_and_choices(
        self,
        example: Mapping[str, Any],
        seed: Any = 0,
        truncate: bool = True,
        hidden_fields: Iterable[str] = (),
    ) -> PromptedInput:
        """Render only what the model sees, with ``hidden_fields`` (labels) removed.

        Jinja renders lazily, so we stop at the first "|||": the target part, which
        normally reads the label, is never evaluated. Any read of a hidden field before
        that point is a LABEL_LEAK.
        """
        hidden = set(hidden_fields)
        visible = {k: v for k, v in example.items() if k not in hidden}
        try:
            context = self._context(visible, self._rng(seed))
        except RenderError as err:
            leak = self._as_leak(err, hidden)
            if leak is err:
                raise
            raise leak from err
        chunks: list[str] = []
        try:
            for chunk in self._compile_body(truncate).generate(context):
                chunks.append(chunk)
                if SEPARATOR in chunk:
                    break
        except jinja2.UndefinedError as exc:
            raise self._as_leak(_undefined_error(exc), hidden) from exc
        except jinja2.sandbox.SecurityError as exc:
            raise self._unsafe(exc) from exc
        except RenderError:
            raise
        except Exception as exc:  # noqa: BLE001 - any template bug is a typed failure
            raise RenderError(SkipReason.RENDER_ERROR, f"{type(exc).__name__}: {exc}") from exc
        text = "".join(chunks)
        if SEPARATOR not in text:
            if not text.strip():
                raise RenderError(SkipReason.EMPTY_INPUT, "template rendered nothing")
            raise RenderError(SkipReason.BAD_SEPARATOR, f"no '{SEPARATOR}' in output")
        input_text = _unescape(text.split(SEPARATOR, 1)[0]).strip()
        choices = context["answer_choices"]
        self._check_input(input_text, choices)
        return PromptedInput(input_text, tuple(choices))

    # -- internals -------------------------------------------------------------

    def _rng(self, seed: Any) -> random.Random:
        # str seeds are hashed deterministically by random.Random (unlike hash()).
        return random.Random(f"{self.id}:{seed}")

    def _compile_body(self, truncate: bool) -> jinja2.Template:
        source = self.jinja
        if truncate:  # exactly PromptSource's trick: cap every {{ ... }} substitution
            source = source.replace("}}", f" | string | truncate({TEXT_VAR_LENGTH}) }}}}")
        try:
            return _compile(source)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(SkipReason.RENDER_ERROR, f"template syntax error: {exc}") from exc

    def _context(self, example: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
        if "answer_choices" in example:
            raise RenderError(SkipReason.RENDER_ERROR, "example has reserved key 'answer_choices'")
        if self.answer_choices_jinja is None:
            raise RenderError(SkipReason.NO_ANSWER_CHOICES, "generation template (answer_choices: null)")
        context = _escape_pipes(example)
        context[_RNG_KEY] = rng
        try:
            choices_template = _compile(self.answer_choices_jinja)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(SkipReason.RENDER_ERROR, f"answer_choices syntax error: {exc}") from exc
        rendered = self._run(choices_template, context)
        # Same order as PromptSource: choices are rendered first, then the template.
        context["answer_choices"] = [_unescape(c.strip()) for c in rendered.split(SEPARATOR)]
        return context

    def _run(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        try:
            return template.render(context)
        except jinja2.UndefinedError as exc:
            raise _undefined_error(exc) from exc
        except jinja2.sandbox.SecurityError as exc:
            raise self._unsafe(exc) from exc
        except Exception as exc:  # noqa: BLE001 - e.g. IndexError on answer_choices[label]
            raise RenderError(SkipReason.RENDER_ERROR, f"{type(exc).__name__}: {exc}") from exc

    def _unsafe(self, exc: Exception) -> RenderError:
        where = f" ({self.source})" if self.source else ""
        return RenderError(SkipReason.UNSAFE_TEMPLATE, f"template {self.name!r}{where}: {exc}")

    @staticmethod
    def _split(text: str) -> list[str]:
        parts = [_unescape(p).strip() for p in text.split(SEPARATOR)]
        if len(parts) == 1 and not parts[0]:
            # Conditional templates (COPA "effect"-only, TREC per-class) render nothing.
            raise RenderError(SkipReason.EMPTY_INPUT, "template rendered nothing")
        return parts

    @staticmethod
    def _check_input(input_text: str, choices: Sequence[str]) -> None:
        if not input_text:
            raise RenderError(SkipReason.EMPTY_INPUT, "input rendered empty")
        if any(not c for c in choices):
            raise RenderError(SkipReason.EMPTY_CHOICE, f"empty answer choice in {list(choices)!r}")

    @staticmethod
    def _as_leak(err: RenderError, hidden: set[str]) -> RenderError:
        """Turn "hidden field is undefined" into LABEL_LEAK; other errors pass through."""
        match = _UNDEFINED_NAME.search(err.detail) if err.reason is SkipReason.MISSING_FIELD else None
        if match and match.group(1) in hidden:
            return RenderError(SkipReason.LABEL_LEAK, f"prompt reads hidden field {match.group(1)!r}")
        return err


def render_dataset(
    template: PromptTemplate,
    examples: Iterable[Mapping[str, Any]],
    seeds: Iterable[Any] | None = None,
    hidden_fields: Iterable[str] = (),
    truncate: bool = True,
) -> tuple[list[RenderedExample], SkipCounter]:
    """Render every example, collecting failures by reason instead of raising.

    With ``hidden_fields`` each example is also rendered without them, and the result
    must equal the labeled rendering's input and choices; otherwise it is a LABEL_LEAK
    (the prompt would depend on the label).
    """
    hidden = tuple(hidden_fields)
    examples = list(examples)
    keys = list(seeds) if seeds is not None else list(range(len(examples)))
    if len(keys) != len(examples):
        raise ValueError(f"{len(keys)} seeds for {len(examples)} examples")
    rendered: list[RenderedExample] = []
    skipped = SkipCounter()
    for example, key in zip(examples, keys):
        try:
            # Blind rendering first: a label-conditioned template (e.g. TREC's
            # `{% if label_coarse == 3 %}`) is a leak even where it renders nothing.
            blind = template.render_input_and_choices(example, key, truncate, hidden) if hidden else None
            full = template.render(example, seed=key, truncate=truncate)
            if blind is not None and blind != full.prompt:
                raise RenderError(SkipReason.LABEL_LEAK, "input or choices change when the label is hidden")
        except RenderError as err:
            skipped.add(err)
            continue
        rendered.append(full)
    return rendered, skipped
