"""The Hugging Face classifier judge on a tiny random RoBERTa built offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.errors import UserError

torch = pytest.importorskip("torch", reason="the hf: judge needs torch (toolchain extra)")
transformers = pytest.importorskip("transformers", reason="the hf: judge needs transformers (toolchain extra)")

from runtime.judges.hf import HFJudge  # noqa: E402

WORDS = "you are so dumb and stupid have a nice day what an idea".split()


def _tiny_classifier(path: Path, id2label: dict[int, str], problem_type: str | None = None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=32)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, id2label=id2label,
                           label2id={v: k for k, v in id2label.items()}, problem_type=problem_type)
    RobertaForSequenceClassification(config).eval().save_pretrained(path)
    fast.save_pretrained(path)
    return path


TEXTS = ["you are so dumb and stupid", "have a nice day", "what an idea", ""]


def _manual_logits(path: Path, text: str) -> "torch.Tensor":
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits[0]


def test_single_label_is_softmax_of_the_toxic_column(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "m", {0: "neutral", 1: "toxic"})
    judge = HFJudge(str(path), batch_size=3, device="cpu")
    scores = judge.score(TEXTS)
    assert scores.shape == (len(TEXTS),) and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    expected = [torch.softmax(_manual_logits(path, t), -1)[1].item() for t in TEXTS]
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # batched with padding == one at a time
    assert judge.describe()["label"] == "toxic" and judge.describe()["activation"] == "softmax"
    assert judge.name == f"hf:{path}"


def test_multi_label_uses_sigmoid_and_a_named_label(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "m", {0: "insult", 1: "Toxic", 2: "threat"}, "multi_label_classification")
    scores = HFJudge(str(path), device="cpu").score(TEXTS[:2])
    np.testing.assert_allclose(scores, [torch.sigmoid(_manual_logits(path, t))[1].item() for t in TEXTS[:2]],
                               atol=1e-5)
    insult = HFJudge(str(path), label="insult", device="cpu").score(TEXTS[:1])
    np.testing.assert_allclose(insult, [torch.sigmoid(_manual_logits(path, TEXTS[0]))[0].item()], atol=1e-5)


def test_unknown_label_and_missing_model_are_user_errors(tmp_path: Path) -> None:
    path = _tiny_classifier(tmp_path / "m", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(UserError, match=r"no single a label named toxic.*0: LABEL_0, 1: LABEL_1.*#<label>"):
        HFJudge(str(path))
    with pytest.raises(UserError, match="no single label 'hate'"):
        HFJudge(str(path), label="hate")
    with pytest.raises(UserError, match="cannot load the classifier"):
        HFJudge(str(tmp_path / "absent"))
