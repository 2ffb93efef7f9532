"""Training: stage 1 freezes the LM and trains all CTR parts, resume, NaN, stage 2, CLI."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctr.cli import main
from ctr.config import TrainConfig
from ctr.core.model import CTRModel
from ctr.train.trainer import TrainingDiverged, plan_run, train


def cfg_for(tiny_paths, task_file, out, arch="llama", **kw):
    base = dict(output_dir=str(out), model=str(tiny_paths[arch]), preset="tiny",
                train_files=[str(task_file)], max_source_len=32, max_target_len=8,
                code_length=3, codebook_size=8, save_every=3)
    base.update(kw)
    return TrainConfig.from_flags(**base)


def backbone_state(path):
    from ctr.core.backbone import load_backbone
    model, _ = load_backbone(str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


CPU_RECIPE = dict(codebook_init="vocab", decoder_init="identity", encoder_init="spread",
                  codebook_lm_grad=True, encoder_lr_scale=0.002)


@pytest.mark.parametrize("arch,recipe", [("llama", {}), ("t5", {}), ("llama", CPU_RECIPE)])
def test_stage1_freezes_backbone_and_trains_every_ctr_part(tiny_paths, task_file, tmp_path, arch,
                                                           recipe):
    cfg = cfg_for(tiny_paths, task_file, tmp_path / "run", arch, **recipe).resolved()
    torch.manual_seed(cfg.seed)
    from ctr.train.trainer import build_model, load_tasks
    init = build_model(cfg, load_tasks(cfg, verbose=False))
    before = {k: v.clone() for k, v in init.ctr_state_dict().items()}
    live, backbone_grads = [], []

    def watch(step, core):  # the model being trained, as the optimizer is about to update it
        live[:] = [core]
        backbone_grads.extend(n for n, p in core.backbone.named_parameters() if p.grad is not None)
    final = train(cfg, hooks={"before_update": watch})
    trained = CTRModel.from_pretrained(final)
    after = trained.ctr_state_dict()
    for part in ("task_embedding.weight", "encoder", "quantizer.codebook", "decoder.weight"):
        assert not torch.equal(before[part], after[part]), f"{part} did not change"
    # the LM the run trained with (in memory, after its last update), not the folder it was loaded from
    assert live and not backbone_grads, f"backbone weights got gradients: {sorted(set(backbone_grads))[:3]}"
    original = backbone_state(tiny_paths[arch])
    for k, v in live[0].backbone.state_dict().items():
        assert torch.equal(v, original[k]), f"backbone weight {k} changed"
    assert not (final / "backbone").exists()  # frozen backbone is referenced, not copied
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    for key in ("loss", "vq_loss", "code_perplexity", "codes_in_use", "lr", "grad_norm"):
        assert key in records[-1]
    assert len(records[-1]["code_perplexity"]) == cfg.ctr.code_length


@pytest.mark.parametrize("quantizer,stage", [("plain", 1), ("ema", 1), ("plain", 2)])
def test_resume_after_interruption_equals_uninterrupted_run(tiny_paths, task_file, tmp_path,
                                                           quantizer, stage):
    extra = dict(quantizer=quantizer)
    if stage == 2:
        s1 = train(cfg_for(tiny_paths, task_file, tmp_path / "s1"))
        extra.update(stage=2, init_from=str(s1))
    full = train(cfg_for(tiny_paths, task_file, tmp_path / "full", **extra))
    cut = cfg_for(tiny_paths, task_file, tmp_path / "cut", **extra)
    train(cut, stop_after=4)  # dies after step 4; the last checkpoint is step 3
    assert (tmp_path / "cut" / "checkpoint-0000003").exists() and not (tmp_path / "cut" / "final").exists()
    resumed = train(cfg_for(tiny_paths, task_file, tmp_path / "cut", resume=True, **extra))
    a, b = load_file(str(full / "ctr_weights.safetensors")), load_file(str(resumed / "ctr_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if stage == 2:
        fa = CTRModel.from_pretrained(full).backbone.state_dict()
        fb = CTRModel.from_pretrained(resumed).backbone.state_dict()
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
    la = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "step_time"} for x in lines]
    assert strip(la) == strip(lb)


def test_a_run_leaves_its_config_as_given_and_records_what_it_used(tiny_paths, task_file, tmp_path):
    cfg = cfg_for(tiny_paths, task_file, tmp_path / "run", max_minutes=5.0)
    given = copy.deepcopy(cfg)
    train(cfg)
    assert cfg == given  # neither the preset, the packing nor the time budget wrote into it
    read = lambda name: TrainConfig.from_dict(json.loads((tmp_path / "run" / name).read_text()))
    assert read("train_config.json") == given and given.steps is None
    used = read("resolved_config.json")  # beside it: the preset's values, the module, the layout
    assert used == dataclasses.replace(given.resolved(), packing="yes")
    assert used.steps == 6 and used.ctr.code_length == 3 and used.codebook_recipe == "paper"


def test_stage2_trains_backbone_and_saves_it(tiny_paths, task_file, tmp_path):
    s1 = train(cfg_for(tiny_paths, task_file, tmp_path / "s1"))
    s2 = train(cfg_for(tiny_paths, task_file, tmp_path / "s2", stage=2, init_from=str(s1),
                       vq_weight=0.5, codebook_lm_grad=True))
    assert (s2 / "backbone" / "config.json").exists()
    # stage 2 goes on with stage 1's module, and its resolved_config.json says so
    recorded = json.loads((tmp_path / "s2" / "resolved_config.json").read_text())["ctr"]
    assert (recorded["vq_weight"], recorded["codebook_lm_grad"]) == (1.0, False)
    given = json.loads((tmp_path / "s2" / "train_config.json").read_text())["ctr"]
    assert (given["vq_weight"], given["codebook_lm_grad"]) == (0.5, True)  # as it was given
    with pytest.raises(ValueError, match="target-delimiter"):
        train(cfg_for(tiny_paths, task_file, tmp_path / "s2b", stage=2, init_from=str(s1),
                      target_delimiter=" "))
    # only a delimiter that was given is compared: another module flag builds a module whose
    # delimiter is the recipe's, not a request
    spaced = train(cfg_for(tiny_paths, task_file, tmp_path / "s1_spaced", target_delimiter=" ", steps=1))
    run = plan_run(cfg_for(tiny_paths, task_file, tmp_path / "s2c", stage=2, init_from=str(spaced),
                           vq_weight=0.5))
    assert run.ctr.target_delimiter == " "
    with pytest.raises(ValueError, match="target-delimiter"):
        plan_run(cfg_for(tiny_paths, task_file, tmp_path / "s2c", stage=2, init_from=str(spaced),
                         target_delimiter="\\n"))
    m1, m2 = CTRModel.from_pretrained(s1), CTRModel.from_pretrained(s2)
    changed = [k for k, v in m1.backbone.state_dict().items() if not torch.equal(v, m2.backbone.state_dict()[k])]
    assert changed


def test_nan_stops_training_and_keeps_last_good_checkpoint(tiny_paths, task_file, tmp_path):
    cfg = cfg_for(tiny_paths, task_file, tmp_path / "run")

    def poison(step, out):
        if step == 4:
            out.token_loss_sum = out.token_loss_sum * float("nan")
        return out
    with pytest.raises(TrainingDiverged, match="step 4"):
        train(cfg, hooks={"after_forward": poison})
    ckpt = tmp_path / "run" / "checkpoint-0000003"
    model = CTRModel.from_pretrained(ckpt / "model")
    assert all(torch.isfinite(v).all() for v in model.ctr_state_dict().values() if v.is_floating_point())
    assert not (tmp_path / "run" / "final").exists()


def test_gradient_accumulation_matches_one_big_batch(tiny_paths, task_file, tmp_path):
    a = train(cfg_for(tiny_paths, task_file, tmp_path / "a", micro_batch_size=1, steps=2))
    b = train(cfg_for(tiny_paths, task_file, tmp_path / "b", micro_batch_size=4, steps=2))
    wa, wb = load_file(str(a / "ctr_weights.safetensors")), load_file(str(b / "ctr_weights.safetensors"))
    # learned parameters only: the usage statistic is an EMA per forward pass
    for k in ("task_embedding.weight", "encoder", "quantizer.codebook", "decoder.weight"):
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_cli_train_and_codes(tiny_paths, task_file, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny", "--train-files",
               str(task_file), "--output-dir", str(out), "--code-length", "3", "--codebook-size", "8",
               "--max-source-len", "32", "--steps", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Code table (3 tasks)" in printed and "Loss curve" in printed
    assert main(["codes", str(out)]) == 0
    assert "task0" in capsys.readouterr().out
    # the model card names the task types and the last logged metrics of this run
    card = (out / "final" / "README.md").read_text()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "| unknown | 3 |" in card and f"| step | {last['step']} |" in card
    assert "ctr train --model" in card


def test_cli_reports_bad_input(tiny_paths, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "input": "x", "target": "y"}\n{"task": "a", "input": \n')
    rc = main(["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny", "--train-files",
               str(bad), "--output-dir", str(tmp_path / "o")])
    assert rc == 2 and f"{bad}:2" in capsys.readouterr().err
    rc = main(["train", "--model", str(tmp_path / "missing"), "--preset", "tiny", "--train-files",
               str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "o")])
    assert rc == 2 and "nope.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects a value outside the choices
        main(["train", "--mixing", "weird"])
    assert main(["train", "--stage", "3"]) == 2
    assert "--stage must be 1 or 2" in capsys.readouterr().err


def test_no_codes_baseline_trains_the_backbone_and_loads_for_eval(tiny_paths, task_file, tmp_path):
    from ctr.core.loading import load_model
    final = train(cfg_for(tiny_paths, task_file, tmp_path / "mt", stage=2, no_codes=True))
    model = load_model(str(tmp_path / "mt"))
    assert not model.config.use_codes and model.config.backbone_trained
    assert model.code_table() == {}
    original = backbone_state(tiny_paths["llama"])
    assert any(not torch.equal(v, original[k]) for k, v in model.backbone.state_dict().items())
    assert (final / "backbone" / "config.json").exists()
    with pytest.raises(ValueError, match="--no-codes"):
        cfg_for(tiny_paths, task_file, tmp_path / "x", no_codes=True)  # stage 1 has nothing to train


def test_resume_refuses_other_tasks_or_settings(tiny_paths, task_file, tmp_path, capsys):
    from conftest import write_tasks
    train(cfg_for(tiny_paths, task_file, tmp_path / "run"), stop_after=3)  # checkpoint-3
    with pytest.raises(ValueError, match=r"--batch-size 8 \(checkpoint: 4\).*--lr 0\.5 \(checkpoint: 0\.01\)"):
        train(cfg_for(tiny_paths, task_file, tmp_path / "run", resume=True, batch_size=8, lr=0.5))
    other = write_tasks(tmp_path / "other.jsonl", n_tasks=4)  # one more task, same first three
    with pytest.raises(ValueError, match=r"task list: 4 tasks \(checkpoint: 3\).*task id 3: 'task3' "
                                         r"\(checkpoint: nothing\)"):
        train(cfg_for(tiny_paths, other, tmp_path / "run", resume=True))
    rc = main(["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny", "--train-files",
               str(task_file), "--output-dir", str(tmp_path / "run"), "--code-length", "3",
               "--codebook-size", "8", "--max-source-len", "32", "--max-target-len", "8",
               "--resume", "--seed", "1", "--quantizer", "ema"])
    err = capsys.readouterr().err
    assert rc == 2 and "--seed 1 (checkpoint: 0)" in err and "--quantizer 'ema' (checkpoint: 'plain')" in err
    assert not (tmp_path / "run" / "final").exists()


def test_every_run_reports_its_codebook_health(tiny_paths, tmp_path, capsys):
    from conftest import write_t0_folder
    from ctr.core.code_health import codebook_health
    data = write_t0_folder(tmp_path / "data")  # T0 tasks of two types (the manifest's)
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny", "--data-dir", str(data),
                 "--output-dir", str(out), "--code-length", "3", "--codebook-size", "8",
                 "--max-source-len", "32", "--steps", "3", "--codebook-recipe", "stable"]) == 0
    printed = capsys.readouterr().out
    assert "## Codebook health" in printed and "distinct codes / tasks" in printed
    table = json.loads((out / "code_table.json").read_text())
    manifest = {r.split("\t")[0][:-6]: r.split("\t")[3] for r in
                (data / "t0_train_manifest.tsv").read_text().splitlines()[1:]}
    want = codebook_health(list(table.values()), 8, [manifest[n] for n in table])
    assert want.type_gap is not None
    saved = json.loads((out / "codebook_health.json").read_text())
    assert saved["distinct_codes"] == want.distinct_codes and saved["type_gap"] == round(want.type_gap, 4)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"distinct_codes", "largest_value_share", "type_gap"} <= r.keys() for r in records)
    assert records[-1]["distinct_codes"] == want.distinct_codes
    assert main(["codes", str(out), "--data-dir", str(data)]) == 0
    assert f"{want.type_gap:+.3f}" in capsys.readouterr().out


def write_typed_tasks(tmp_path: Path) -> Path:
    """Eight tasks of two types (four sentiment, four extractive QA), with a manifest."""
    folder = tmp_path / "data" / "t0_train"
    folder.mkdir(parents=True)
    rows = ["file\tdataset\ttemplate\ttask_type\texamples\tempty_targets"]
    kinds = {"sentiment": ("Review: the {} was good.", ["good", "bad"]),
             "extractive_qa": ("Context: {} is red. What is red?", ["the {}"])}
    for kind, (prompt, answers) in kinds.items():
        for k in range(4):
            pairs = [(prompt.format(w), answers[i % len(answers)].format(w))
                     for i, w in enumerate(["cat", "sun", "tree", "rock", "fish", "milk"])]
            (folder / f"{kind}{k}_tpl.jsonl").write_text(
                "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
            rows.append(f"{kind}{k}_tpl.jsonl\t{kind}{k}\ttpl\t{kind}\t6\t0")
    (tmp_path / "data" / "t0_train_manifest.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data"


def train_typed(tiny_paths, data: Path, out: Path, *flags: str) -> list[dict]:
    """A tiny stable stage 1 on the typed tasks; returns its metrics records."""
    assert main(["train", "--model", str(tiny_paths["llama"]), "--preset", "tiny",
                 "--data-dir", str(data), "--output-dir", str(out), "--code-length", "4",
                 "--codebook-size", "8", "--max-source-len", "32", "--codebook-recipe", "stable",
                 *flags]) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_grouped_codes_start_tasks_of_a_type_on_shared_values(tiny_paths, tmp_path):
    """--encoder-init grouped: tasks described alike (here: the same task type) start on shared
    values and end training each on a code of its own; spread codes share values by chance."""
    data = write_typed_tasks(tmp_path)
    gaps = {}
    for init in ("grouped", "spread"):
        records = train_typed(tiny_paths, data, tmp_path / init, "--steps", "6", "--encoder-init", init)
        assert records[-1]["distinct_codes"] == 8  # one code per task, start to end
        gaps[init] = (records[0]["type_gap"], records[-1]["type_gap"])
    assert min(gaps["grouped"]) > 0.3 and max(gaps["spread"]) < min(gaps["grouped"]) - 0.2, gaps


def test_task_embedding_lr_scale_zero_keeps_the_task_embeddings_bit_identical(tiny_paths, tmp_path):
    """--task-embedding-lr-scale 0 (the proxy's held grouped start uses 0.01): the task
    embeddings, which move tasks between codes, stay bit-identical over training while the
    encoder and the value offsets still learn; at a scale of 1 they move."""
    data = write_typed_tasks(tmp_path)
    weights = {}
    for scale in ("1", "0"):
        for steps in ("1", "4"):
            out = tmp_path / f"scale{scale}_steps{steps}"
            train_typed(tiny_paths, data, out, "--steps", steps, "--encoder-init", "grouped", "--lr", "0.3",
                        "--task-embedding-lr-scale", scale)
            weights[scale, steps] = load_file(str(out / "final" / "ctr_weights.safetensors"))
    changed = lambda scale, name: not torch.equal(weights[scale, "1"][name], weights[scale, "4"][name])
    assert not changed("0", "task_embedding.weight")
    assert changed("1", "task_embedding.weight")
    assert changed("0", "encoder") and changed("0", "quantizer.offsets")
