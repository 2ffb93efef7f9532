"""The prompt path options of the CPU presets: codebook and decoder init on the scale of the
token embeddings, the LM gradient reaching the codebook, every model option from `ctr train`."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ctr.train.batching import Encoded, collate
from ctr.cli import build_parser
from ctr.config import TRAIN_MODULE_OPTIONS, CTRConfig, MixtureOptions, TrainConfig
from ctr.presets import CODEBOOK_RECIPES, PRESET_RECIPES, PRESETS
from ctr.core.model import CTRModel
from ctr.core.testing import tiny_backbone

ROWS = [Encoded(0, [20, 21, 22, 23], [30, 31, 1]), Encoded(1, [20, 26], [32, 1]),
        Encoded(2, [27, 28, 29], [33, 34, 1])]


def make(arch: str = "llama", **kw) -> CTRModel:
    backbone, tok = tiny_backbone(arch)
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=3, codebook_size=8, task_names=["a", "b", "c"], **kw)
    return CTRModel(backbone, cfg, tok)


def lm_grads(model: CTRModel, arch: str = "llama") -> dict[str, torch.Tensor]:
    model.freeze_backbone()
    model.zero_grad()
    out = model(**collate(ROWS, 0, arch == "t5"))
    out.lm_loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if not n.startswith("backbone.")}


@pytest.mark.parametrize("quantizer", ["plain", "ema"])
def test_vocab_codebook_and_identity_decoder_make_the_prompt_token_embeddings(quantizer):
    model = make(quantizer=quantizer, codebook_init="vocab", decoder_init="identity")
    emb = model.backbone.get_input_embeddings().weight
    book = model.quantizer.weight
    # every codebook row is one of the LM's token embeddings
    d = (book.detach()[:, None] - emb.detach()[None]).abs().amax(-1)  # [K, vocab]
    assert torch.equal(d.min(1).values, torch.zeros(8))
    codes = torch.tensor([[0, 5, 7]])
    prompt, _, _ = model.soft_prompt(1, codes=codes)
    assert torch.allclose(prompt[0], book[codes[0]], atol=1e-6)  # identity decoder


def test_paper_init_is_unchanged_by_the_new_options():
    a, b = make(), make(codebook_init="uniform", decoder_init="random")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert a.quantizer.weight.abs().max() <= 100 / 8  # uniform(-100/K, 100/K)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_lm_gradient_reaches_the_selected_codebook_rows_only_with_codebook_lm_grad(arch):
    paper = make(arch)
    g = lm_grads(paper, arch)
    assert g["quantizer.codebook"].abs().sum() == 0  # paper: only the VQ loss moves it
    assert g["encoder"].abs().sum() > 0 and g["task_embedding.weight"].abs().sum() > 0
    model = make(arch, codebook_lm_grad=True)
    with torch.no_grad():  # same forward value: the loss does not change
        assert model(**collate(ROWS, 0, arch == "t5")).lm_loss == pytest.approx(
            float(paper(**collate(ROWS, 0, arch == "t5")).lm_loss), rel=1e-6)
    g = lm_grads(model, arch)
    used = set(model.task_codes().flatten().tolist())
    rows = g["quantizer.codebook"].abs().sum(1)
    assert all(rows[v] > 0 for v in used)
    assert all(rows[v] == 0 for v in range(8) if v not in used)
    # the encoding still gets the straight-through gradient
    assert g["encoder"].abs().sum() > 0 and g["task_embedding.weight"].abs().sum() > 0


def test_bad_prompt_path_options_are_clear_errors():
    with pytest.raises(ValueError, match="codebook_lm_grad needs quantizer='plain'"):
        CTRConfig(quantizer="ema", codebook_lm_grad=True)
    with pytest.raises(ValueError, match="codebook_init must be one of"):
        CTRConfig(codebook_init="zeros")
    with pytest.raises(ValueError, match="need code_dim"):
        make(code_dim=16, decoder_init="identity")


def test_every_model_option_is_a_train_flag_declared_once():
    ctr_fields = {f.name for f in dataclasses.fields(CTRConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settable = ctr_fields - {"task_names", "use_codes", "backbone", "backbone_trained", "code_dim",
                             "task_embed_dim", "placement", "target_eos",
                             "lora"}  # set by the trainer from --lora-* (ctr.train.lora)
    assert settable == set(TRAIN_MODULE_OPTIONS)
    # TrainConfig holds the module's config instead of repeating its fields; the one shared
    # name is --lora, the switch whose settings CTRConfig.lora records
    assert train_fields & ctr_fields == {"lora"}
    # the mixture options are inherited, not declared again
    assert set(MixtureOptions.__annotations__) <= train_fields
    assert not set(TrainConfig.__annotations__) & set(MixtureOptions.__annotations__)
    args = ["train", "--preset", "cpu-small", "--codebook-recipe", "prompt", "--beta", "0.25",
            "--vq-weight", "0.5", "--codebook-init", "uniform", "--codebook-lm-grad",
            "--encoder-init-std", "0.01", "--target-delimiter", "\\t"]
    parsed = build_parser().parse_args(args)
    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(TRAIN_MODULE_OPTIONS)
    cfg = TrainConfig.from_flags(**{k: v for k, v in vars(parsed).items() if k in names})
    m = cfg.ctr  # the given flags on top of the prompt recipe, escapes read
    assert (m.beta, m.vq_weight, m.codebook_init, m.codebook_lm_grad, m.encoder_init_std) == (
        0.25, 0.5, "uniform", True, 0.01)
    assert (m.target_delimiter, cfg.codebook_recipe) == ("\t", "prompt")
    assert (m.decoder_init, m.encoder_init) == ("identity", "spread")  # the recipe's, not flags
    assert TrainConfig.from_flags(preset="cpu-small").ctr is None  # no module flag: the recipe decides


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_fill_the_model_options_and_flags_override_them(preset):
    cfg = TrainConfig(preset=preset)
    assert (cfg.ctr, cfg.codebook_recipe, cfg.steps, cfg.lr) == (None, None, None, None)  # as given
    run = cfg.resolved()
    assert run.codebook_recipe == PRESET_RECIPES[preset]
    for k, v in CODEBOOK_RECIPES[run.codebook_recipe].items():
        assert getattr(run.ctr, k) == v, k
    for k, v in PRESETS[preset][1].items():
        assert getattr(run, k) == v, k
    assert cfg == TrainConfig(preset=preset)  # resolving filled a copy, not the config
    resolved = TrainConfig.from_flags(preset=preset, codebook_lm_grad=False, beta=0.3).resolved()
    assert (resolved.ctr.codebook_lm_grad, resolved.ctr.beta) == (False, 0.3)
    for recipe, options in CODEBOOK_RECIPES.items():  # --codebook-recipe on any preset
        m = TrainConfig.from_flags(preset=preset, codebook_recipe=recipe, dead_code_threshold=0.5).resolved().ctr
        assert m.dead_code_threshold == 0.5  # a flag overrides its part of the recipe
        assert all(getattr(m, k) == v for k, v in options.items() if k != "dead_code_threshold")
    # the authors' recipe stays reachable for exact replication: CTRConfig's defaults
    paper = TrainConfig(preset="paper", codebook_recipe="paper").resolved().ctr
    assert paper == CTRConfig()
    assert (paper.codebook_init, paper.quantizer, paper.quantize_all_tasks) == ("uniform", "plain", False)
    with pytest.raises(ValueError, match="--codebook-recipe"):
        TrainConfig(codebook_recipe="fancy")
    given = CTRConfig(code_length=4)  # a module given whole is used as it is
    assert TrainConfig(preset=preset, ctr=given).resolved().ctr == given
    assert TrainConfig(preset=preset, ctr=given).resolved().ctr is not given  # a copy
    # flags on top of a module given whole change only their part of it
    assert TrainConfig.from_flags(ctr=CTRConfig(codebook_size=7), code_length=4).ctr == CTRConfig(
        codebook_size=7, code_length=4)


@pytest.mark.parametrize("n_tasks", [3, 40])
def test_spread_encoder_starts_every_task_on_a_code_with_values_used_evenly(n_tasks):
    backbone, tok = tiny_backbone("llama")  # hidden 32: 40 tasks > 32 dims is least squares
    torch.manual_seed(0)
    cfg = CTRConfig(code_length=3, codebook_size=8, task_names=[f"t{i}" for i in range(n_tasks)],
                    codebook_init="vocab", decoder_init="identity", encoder_init="spread")
    model = CTRModel(backbone, cfg, tok)
    codes = model.task_codes()
    counts = torch.bincount(codes.flatten(), minlength=8)
    out = model.quantizer(model.encode_tasks(torch.arange(n_tasks)))
    if n_tasks <= 32:  # exact: every task sits on its drawn code, VQ loss 0
        assert counts.max() <= n_tasks * 3 // 8 + 1  # no value taken by more than its share
        assert float(out.loss.detach()) < 1e-8
    else:  # least squares: still spread over the whole codebook
        assert (counts > 0).all()
    paper = make(encoder_init="random", codebook_init="vocab", decoder_init="identity")
    assert float(paper.quantizer(paper.encode_tasks(torch.arange(3))).loss.detach()) > 1e-2


def test_encoder_lr_scale_sets_the_encoder_group_alone():
    from ctr.train.trainer import make_optimizer
    model = make(codebook_init="vocab", decoder_init="identity", encoder_init="spread")
    model.freeze_backbone()
    cfg = TrainConfig(preset="cpu-small", codebook_recipe="stable").resolved()
    lrs = {id(p): g["lr"] for g in make_optimizer(model, cfg).param_groups for p in g["params"]}
    assert lrs[id(model.encoder)] == pytest.approx(cfg.lr * 0.002)  # with --encoder-init spread
    assert lrs[id(model.decoder.weight)] == pytest.approx(cfg.lr * 0.01)
    assert lrs[id(model.quantizer.codebook)] == lrs[id(model.task_embedding.weight)] == cfg.lr
    paper = TrainConfig(preset="paper", codebook_recipe="paper").resolved()  # no encoder scale: the projection scale for both
    lrs = {id(p): g["lr"] for g in make_optimizer(model, paper).param_groups for p in g["params"]}
    assert lrs[id(model.encoder)] == lrs[id(model.decoder.weight)] == paper.lr


def test_task_embedding_lr_scale_sets_the_task_embeddings_alone():
    from ctr.train.trainer import make_optimizer
    model = make(codebook_init="vocab", decoder_init="identity", encoder_init="spread")
    model.freeze_backbone()
    base = TrainConfig(preset="cpu-small", codebook_recipe="stable").resolved()
    held = TrainConfig.from_flags(preset="cpu-small", codebook_recipe="stable", task_embedding_lr_scale=0.01).resolved()
    groups = {name: make_optimizer(model, cfg).param_groups for name, cfg in (("base", base), ("held", held))}
    lrs = {name: {id(p): g["lr"] for g in gs for p in g["params"]} for name, gs in groups.items()}
    assert lrs["held"][id(model.task_embedding.weight)] == pytest.approx(base.lr * 0.01)
    assert lrs["base"][id(model.task_embedding.weight)] == base.lr
    rest = [id(p) for n, p in model.named_parameters() if p.requires_grad and n != "task_embedding.weight"]
    assert [lrs["held"][i] for i in rest] == [lrs["base"][i] for i in rest]
    # the default adds no group, so the optimizer state of earlier runs keeps its layout
    assert len(groups["held"]) == len(groups["base"]) + 1
    with pytest.raises(ValueError, match="--task-embedding-lr-scale"):
        TrainConfig.from_flags(preset="cpu-small", task_embedding_lr_scale=-1.0)


def test_ema_takes_the_prompt_recipe_without_the_codebook_gradient():
    prompt = dict(preset="cpu-small", codebook_recipe="prompt")
    assert TrainConfig.from_flags(**prompt, quantizer="ema").resolved().ctr.codebook_lm_grad is False
    assert TrainConfig.from_flags(**prompt).resolved().ctr.codebook_lm_grad is True
    with pytest.raises(ValueError, match="codebook_lm_grad needs quantizer='plain'"):
        TrainConfig.from_flags(**prompt, quantizer="ema", codebook_lm_grad=True)
    spread = TrainConfig(preset="cpu-small")
    assert spread.encoder_lr_scale is None and spread.resolved().encoder_lr_scale == 0.002
    assert TrainConfig.from_flags(preset="cpu-small", encoder_init="random").resolved().encoder_lr_scale is None
    assert TrainConfig(preset="cpu-small", stage=2).resolved().encoder_lr_scale is None


def test_the_grouped_start_holds_its_task_embeddings_in_stage_1_unless_told_otherwise():
    """The default of the long-run presets: grouped codes, the task embeddings at 0.1 x lr
    in stage 1; 1 wherever tasks do not start on grouped codes, and a flag wins."""
    from ctr.config.train import GROUPED_TASK_EMBEDDING_LR_SCALE
    for preset in ("cpu-small", "paper"):
        run = TrainConfig(preset=preset).resolved()
        assert (run.codebook_recipe, run.ctr.encoder_init) == ("grouped", "grouped")
        assert run.task_embedding_lr_scale == GROUPED_TASK_EMBEDDING_LR_SCALE < 1
    assert TrainConfig(preset="cpu-small", stage=2).resolved().task_embedding_lr_scale == 1.0
    for other in ("stable", "prompt", "paper"):
        assert TrainConfig(preset="cpu-small", codebook_recipe=other).resolved().task_embedding_lr_scale == 1.0
    assert TrainConfig.from_flags(preset="cpu-small", encoder_init="spread").resolved().task_embedding_lr_scale == 1.0
    assert TrainConfig(preset="cpu-small", task_embedding_lr_scale=1.0).resolved().task_embedding_lr_scale == 1.0


def test_module_options_as_trainconfig_keywords_still_work_and_say_what_replaced_them():
    with pytest.warns(FutureWarning, match="TrainConfig.ctr now; pass the same keywords to TrainConfig.from_flags"):
        old = TrainConfig(preset="tiny", code_length=4, quantizer="ema")
    assert old == TrainConfig.from_flags(preset="tiny", code_length=4, quantizer="ema")
    assert (old.ctr.code_length, old.ctr.quantizer, old.codebook_recipe) == (4, "ema", "paper")
