"""SIMPLE pipeline on tiny random GPT-2, BART and LLaMA models, and its command line."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pruning_models import tiny_model
from pyprune.data.austen import paragraphs, split_of
from pyprune.pruning import model_spec
from pyprune.simple import SimpleConfig, baseline_importance, finetune, learn_masks, perplexity

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CONFIG = SimpleConfig(seq_len=16, batch_size=2, mask_steps=4, finetune_steps=3, progress=False)


def chunks(seed=0):
    return torch.randint(3, 97, (12, 16), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["gpt2", "bart", "llama"])
def test_every_stage(family):
    model, teacher = tiny_model(family), tiny_model(family)
    data = chunks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = learn_masks(model, teacher, data, CONFIG)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())     # weights frozen
    assert all(p.requires_grad for p in model.parameters())
    assert any(not torch.allclose(s, torch.ones_like(s)) for s in scores.heads.values())
    for method in ("simple", "magnitude", "random", "movement"):
        used = scores if method == "simple" else baseline_importance(method, model, data, CONFIG)
        small = finetune(model, teacher, used, 2.0, data, CONFIG)
        spec, full = model_spec(small), model_spec(model)
        assert spec.hidden.size == full.hidden.size // 2
        assert [f.size for f in spec.ffns] == [f.size // 2 for f in full.ffns]
        assert math.isfinite(perplexity(small, data))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())     # finetune copies


def test_mask_learning_distills_from_an_unmasked_teacher_when_teacher_is_model():
    # The CLI passes the model as its own teacher. Were the teacher masked
    # too, the distillation gradient would vanish and only L1 would act:
    # every mask of a kind would move by exactly the same amount.
    model = tiny_model("llama")
    config = SimpleConfig(seq_len=16, batch_size=4, mask_steps=8, mask_lr=0.05, progress=False)
    scores = learn_masks(model, model, chunks(), config)
    heads = torch.cat([s.flatten() for s in scores.heads.values()])
    neurons = torch.cat([s.flatten() for s in scores.neurons.values()])
    assert heads.std() > 1e-4 and neurons.std() > 1e-4
    assert all(p.requires_grad for p in model.parameters())


def test_finetuning_lowers_the_distillation_gap():
    model, teacher = tiny_model("llama"), tiny_model("llama")
    data = chunks()
    scores = baseline_importance("magnitude", model, data, CONFIG)
    config = SimpleConfig(seq_len=16, batch_size=4, finetune_steps=40, lr=3e-3, progress=False)
    untrained = finetune(model, teacher, scores, 2.0, data, SimpleConfig(**{**vars(config), "finetune_steps": 0}))
    trained = finetune(model, teacher, scores, 2.0, data, config)
    with torch.no_grad():
        target = F.softmax(teacher(input_ids=data).logits, -1)

        def gap(m):
            return float(-(target * F.log_softmax(m(input_ids=data).logits, -1)).sum(-1).mean())
        assert gap(trained) < gap(untrained)


def test_relu_swap_and_plain_loading(tmp_path):
    from pyprune.pruning import save_pretrained
    model = tiny_model("llama")
    small = finetune(model, model, baseline_importance("random", model, chunks(), CONFIG), 1.5, chunks(),
                     SimpleConfig(**{**vars(CONFIG), "relu": True}))
    assert small.config.hidden_act == "relu"
    save_pretrained(small, str(tmp_path / "m"))
    code = ("import sys, torch, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]);"
            "print(type(m.model.layers[0].mlp.act_fn).__name__); assert 'pyprune' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("ReLU")


def test_perplexity_is_exp_cross_entropy():
    model = tiny_model("gpt2")
    data = chunks()
    with torch.no_grad():
        logits = model(input_ids=data).logits[:, :-1]
        expected = math.exp(float(F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())))
    assert math.isclose(perplexity(model, data, batch_size=5), expected, rel_tol=1e-5)


def test_errors():
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="ratio"):
        finetune(model, model, baseline_importance("random", model, chunks(), CONFIG), 1.0, chunks(), CONFIG)
    with pytest.raises(ValueError, match="teacher"):
        learn_masks(model, None, chunks(), CONFIG)
    with pytest.raises(ValueError, match="method"):
        baseline_importance("simple", model, chunks(), CONFIG)
    # Scores saved for another model (other sizes, other block names) never become a plan.
    from pyprune.pruning import extract
    other = baseline_importance("magnitude", tiny_model("gpt2", hidden=32), chunks(), CONFIG)
    with pytest.raises(ValueError, match="importance.*another model"):
        extract(model_spec(model), other, 2.0)
    llama_scores = baseline_importance("magnitude", tiny_model("llama"), chunks(), CONFIG)
    with pytest.raises(ValueError, match="importance.*another model"):
        extract(model_spec(model), llama_scores, 2.0)


def test_austen_split_helpers():
    assert paragraphs(["a", "b", "", "", "c", None, "d"]) == ["a b", "c", "d"]
    splits = [split_of(i) for i in range(400)]
    assert splits.count("valid") == splits.count("test") == 40 and splits[160:180] == ["valid"] * 20


def tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = "the a of and to in was her she it he that not be i you had as for with his".split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    return words


def test_command_line_resumes(tmp_path):
    model = tiny_model("llama")
    model.config.vocab_size = 97
    model_dir = str(tmp_path / "model")
    model.save_pretrained(model_dir)
    words = tiny_tokenizer(model_dir)
    generator = torch.Generator().manual_seed(0)
    text = lambda n: "\n".join(" ".join(words[i] for i in torch.randint(0, len(words), (20,), generator=generator))  # noqa: E731
                               for _ in range(n))
    cache = tmp_path / "cache"
    (cache / "austen").mkdir(parents=True)
    for split, n in (("train", 40), ("valid", 5), ("test", 10)):
        (cache / "austen" / f"{split}.txt").write_text(text(n))
    env = {**os.environ, "PYPRUNE_CACHE": str(cache)}
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "pyprune.cli", "simple", "quick", "--model", model_dir, "--out", out,
            "--ratios", "1.5", "2", "--mask-steps", "3", "--finetune-steps", "2", "--eval-chunks", "4"]
    subprocess.run(args, check=True, env=env, capture_output=True)
    result = json.load(open(os.path.join(out, "results.json")))
    assert [r["method"] for r in result["rows"]][:3] == ["full model", "simple", "magnitude"]
    assert len(result["rows"]) == 1 + 4 * 2
    assert all(r["params"] < result["rows"][0]["params"] for r in result["rows"][1:])
    # Every uniform export, loaded by plain transformers in a process without
    # pyprune, scores the perplexity pyprune reported.
    for row in result["rows"][1:]:
        assert math.isclose(row["plain_perplexity"], row["perplexity"], rel_tol=1e-5)
    assert open(os.path.join(out, "results.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    stamp = os.path.getmtime(os.path.join(out, "models", "simple-2", "config.json"))
    subprocess.run(args, check=True, env=env, capture_output=True)            # resumes: nothing retrained
    assert os.path.getmtime(os.path.join(out, "models", "simple-2", "config.json")) == stamp
    bad = subprocess.run(args[:-8] + ["--ratios", "0.5"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--ratios" in bad.stderr
    # Another model pointed at the same run directory is refused, not mixed with its stage outputs.
    other = tiny_model("llama", hidden=32)
    other.config.vocab_size = 97
    other.save_pretrained(str(tmp_path / "other"))
    tiny_tokenizer(str(tmp_path / "other"))
    mixed = subprocess.run([a if a != model_dir else str(tmp_path / "other") for a in args], env=env,
                           capture_output=True, text=True)
    assert mixed.returncode != 0 and "--out" in mixed.stderr and "another task or model" in mixed.stderr


PAIRS = [("en el principio creó dios los cielos y la tierra.", "in the beginning god created the heaven and the earth."),
         ("y la tierra estaba desordenada y vacía,", "and the earth was without form, and void;"),
         ("y dijo dios: sea la luz: y fué la luz.", "and god said, let there be light: and there was light."),
         ("y vió dios que la luz era buena", "and god saw the light, that it was good")] * 3


def test_word_tokenizer_and_pair_rows():
    from pyprune.simple import pair_rows
    from pyprune.simple.seq2seq import word_tokenizer
    tokenizer = word_tokenizer([t for pair in PAIRS for t in pair], min_count=2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tokenizer("God ZEBRA", add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids("god"), 3]
    rows = pair_rows(tokenizer, PAIRS[:2], max_length=6)
    assert rows["input_ids"].shape == rows["attention_mask"].shape and rows["labels"].shape[1] == 6
    first = tokenizer("in the beginning god", add_special_tokens=False)["input_ids"]
    assert rows["labels"][0].tolist() == [0] + first + [2]                 # bos ... eos, cut to 6
    short = 2 + len(tokenizer(PAIRS[1][0], add_special_tokens=False)["input_ids"][:4])
    assert rows["attention_mask"][1].sum() == short and (rows["input_ids"][1, short:] == 1).all()
    with pytest.raises(ValueError, match="pairs"):
        pair_rows(tokenizer, [])


def test_sequence_to_sequence_bart_through_every_stage(tmp_path):
    # BART on (source, target) pairs: masks, every method's fine-tuning, perplexity over
    # target tokens (= exp of the model's own loss), and the export scored by plain
    # transformers in a process without pyprune.
    from pyprune.pruning import save_pretrained
    from pyprune.simple import pair_rows
    from pyprune.simple.cli import plain_perplexity
    from pyprune.simple.seq2seq import small_bart, train_teacher, word_tokenizer
    tokenizer = word_tokenizer([t for pair in PAIRS for t in pair], min_count=1)
    data = pair_rows(tokenizer, PAIRS)
    teacher = train_teacher(small_bart(tokenizer, d_model=32, heads=4, ffn=64), data, steps=30, lr=3e-3,
                            batch_size=4, progress=False)
    with torch.no_grad():
        loss = teacher(**data).loss
    assert math.isclose(perplexity(teacher, data, batch_size=len(PAIRS)), math.exp(float(loss)), rel_tol=1e-5)
    assert perplexity(teacher, data) < len(tokenizer) / 2                  # it learned something
    scores = learn_masks(teacher, teacher, data, CONFIG)
    assert scores.hidden is not None and scores.hidden.std() > 0
    for method in ("simple", "magnitude", "random", "movement"):
        used = scores if method == "simple" else baseline_importance(method, teacher, data, CONFIG)
        small = finetune(teacher, teacher, used, 2.0, data, CONFIG)
        assert model_spec(small).hidden.size == 16
        assert math.isfinite(perplexity(small, data))
    save_pretrained(small, str(tmp_path / "m"))
    torch.save(data, tmp_path / "ids.pt")
    assert math.isclose(plain_perplexity(str(tmp_path / "m"), str(tmp_path / "ids.pt")), perplexity(small, data),
                        rel_tol=1e-5)


def test_command_line_sequence_to_sequence_task(tmp_path):
    out = str(tmp_path / "run")
    args = [sys.executable, "-m", "pyprune.cli", "simple", "quick", "--task", "bible-es-en", "--out", out,
            "--teacher-steps", "3", "--ratios", "2", "--methods", "simple", "random", "--mask-steps", "2",
            "--finetune-steps", "1", "--eval-chunks", "4", "--threads", "1"]
    subprocess.run(args, check=True, capture_output=True)
    result = json.load(open(os.path.join(out, "results.json")))
    assert result["task"] == "bible-es-en" and [r["method"] for r in result["rows"]] == ["full model", "simple",
                                                                                         "random"]
    assert all(math.isclose(r["plain_perplexity"], r["perplexity"], rel_tol=1e-5) for r in result["rows"][1:])
    assert os.path.isfile(os.path.join(out, "teacher", "tokenizer.json"))
