"""GQTokenizer: lossless round trip for every string (hypothesis), both modes, save/load, HF export, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqkit
from vqkit.tokenizers.text import GQTokenizer, tokenizer_from_model_config
from vqkit.tokenizers.text_vocab import build_vocabulary

SCRIPTS = [
    "",
    "To be, or not to be: that is the question.",
    "中文分词是一个难题，汉字没有空格。",
    "اللغة العربية تكتب من اليمين إلى اليسار",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "Ελληνικά, русский, हिन्दी, 日本語のテキスト",
    "\x00\x01 control \r\n\t tabs   and    spaces\n\n",
    "a" * 200 + " supercalifragilisticexpialidocious",
]
PIECES = [b" the", b" and", b"ing", b" to", b"the", b" of", "中文".encode(), b"  ", b"ion", b" question"]


def vocab_tokenizer() -> GQTokenizer:
    return GQTokenizer(build_vocabulary(PIECES), max_token_len=10)


def model_tokenizer(segmentation: str = "within") -> GQTokenizer:
    """A tokenizer around an untrained tiny network, built from a config the way export rebuilds it."""
    torch.manual_seed(0)
    k = 6
    config = {
        "_target_": "vqkit.models.TextTokenizer",
        "encoder": {"_target_": "vqkit.modalities.text.ByteEncoder", "latent_dim": 8, "width": 16, "depth": 1,
                    "num_heads": 2},
        "decoder": {"_target_": "vqkit.modalities.text.SegmentDecoder", "latent_dim": 8, "width": 16, "depth": 1,
                    "max_token_len": k},
        "quantizer": {"_target_": "vqkit.quantizers.GatedQuantizer", "dim": 8, "codebook_size": 32, "inner": "vq",
                      "inner_options": {"kmeans_init": False}, "max_token_len": k, "width": 16, "depth": 1,
                      "num_heads": 2},
    }
    return tokenizer_from_model_config(config, segmentation=segmentation, row_len=k, mode="model")


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, GQTokenizer]:
    return {"vocab": vocab_tokenizer(), "model": model_tokenizer(), "across": model_tokenizer("across")}


@pytest.mark.parametrize("text", SCRIPTS)
@pytest.mark.parametrize("which", ["vocab", "model", "across"])
def test_round_trip_scripts(text: str, which: str, tokenizers) -> None:
    tok = tokenizers[which]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_round_trip_any_string_vocab_mode(text: str, tokenizers) -> None:
    assert tokenizers["vocab"].decode(tokenizers["vocab"].encode(text)) == text


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_round_trip_any_string_model_mode(text: str, tokenizers) -> None:
    assert tokenizers["model"].decode(tokenizers["model"].encode(text)) == text


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_round_trip_any_bytes(data: bytes, tokenizers) -> None:
    for tok in tokenizers.values():
        assert tok.decode_bytes(tok.encode_bytes(data)) == data


def test_vocab_mode_uses_fewest_pieces() -> None:
    tok = vocab_tokenizer()
    ids = tok.encode(" the question")
    assert [tok.token_bytes(i) for i in ids] == [b" the", b" question"]
    assert tok.encode("中文") == [tok.ids["中文".encode()]]


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.integers(0, 265), max_size=20))
def test_decode_arbitrary_ids_never_crashes(ids: list[int]) -> None:
    tok = vocab_tokenizer()
    assert isinstance(tok.decode(ids), str)


def test_lone_surrogates_are_refused_naming_the_first_and_the_fixes() -> None:
    tok = vocab_tokenizer()
    with pytest.raises(ValueError, match=r"2 lone surrogate\(s\), the first U\+D800 at index 5.*encode_bytes") as err:
        tok.encode("lone \ud800 and \udcff surrogates")
    assert "text.encode('utf-16', 'surrogatepass').decode('utf-16')" in str(err.value)
    text = "smile \ud83d\ude00"  # one character written as two UTF-16 halves: the fix the message gives works
    joined = text.encode("utf-16", "surrogatepass").decode("utf-16")
    assert joined == "smile \U0001F600" and tok.decode(tok.encode(joined)) == joined
    raw = b"caf\xe9 latin-1".decode("utf-8", errors="surrogateescape")  # undecodable bytes as lone surrogates
    assert tok.decode_bytes(tok.encode_bytes(raw.encode("utf-8", "surrogateescape"))) == b"caf\xe9 latin-1"


def test_bad_ids_and_inputs_are_reported() -> None:
    tok = vocab_tokenizer()
    with pytest.raises(ValueError, match="not an integer in"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="not an integer in"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="encode_bytes"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="UTF-8"):
        tok.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="single bytes"):
        GQTokenizer([b"ab"])
    with pytest.raises(ValueError, match="needs the network"):
        tok.set_mode("model")


def test_batch_api(tokenizers) -> None:
    tok = tokenizers["model"]
    batch = tok.encode_batch(SCRIPTS[:3])
    assert batch == [tok.encode(t) for t in SCRIPTS[:3]]
    assert tok.decode_batch(batch) == SCRIPTS[:3]


def test_save_load_without_pickle(tmp_path: Path, tokenizers) -> None:
    tok = tokenizers["model"]
    tok.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "vocab.json"
    ]
    loaded = vqkit.load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, GQTokenizer) and loaded.vocab == tok.vocab and loaded.mode == "model"
    for text in SCRIPTS:
        assert loaded.encode(text) == tok.encode(text)
    vocab_only = tokenizers["vocab"].save(tmp_path / "vocab_only", with_model=False)
    assert vqkit.load_tokenizer(vocab_only).encode("the question") == tokenizers["vocab"].encode("the question")


def test_hugging_face_export_matches_vocab_mode(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = vocab_tokenizer()
    tok.save(tmp_path / "tok")
    hf = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    for text in SCRIPTS + ["the theme of the question and the ending"]:
        encoding = hf.encode(text)
        assert hf.decode(encoding.ids) == text
        assert len(encoding.ids) == len(tok.encode(text))
        assert tok.decode(encoding.ids) == text  # the HF ids index the same vocabulary


def test_format_version_1_artifacts_still_load(tmp_path: Path, tokenizers) -> None:
    """A vqkit 0.1 text artifact (GatedTextAutoencoder parts, the gate beside the quantizer) loads as the same net."""
    import json

    from safetensors.torch import load_file, save_file

    tok = tokenizers["model"]
    folder = tok.save(tmp_path / "v2")
    config = json.loads((folder / "config.json").read_text())
    model = config["model"]
    gq = model["quantizer"]
    config["format_version"] = 1
    config["model"] = {
        "encoder": model["encoder"], "decoder": model["decoder"],
        "quantizer": {"_target_": "vqkit.quantizers.VectorQuantizer", "dim": gq["dim"],
                      "codebook_size": gq["codebook_size"], **gq["inner_options"]},
        "gate": {"_target_": "vqkit.modalities.text_gq.BoundaryGate", "latent_dim": gq["dim"], "width": gq["width"],
                 "depth": gq["depth"], "num_heads": gq["num_heads"], "kernel": gq["max_token_len"]},
        "alpha": 2.0, "reservoir_size": 64,
    }
    old_names = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if name.startswith("quantizer.gate."):
            name = name[len("quantizer."):]
        elif name.startswith("quantizer.inner."):
            name = "quantizer." + name[len("quantizer.inner."):]
        old_names[name] = tensor
    old_names["steps"] = torch.tensor(3)
    save_file(old_names, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    loaded = vqkit.load_tokenizer(folder)
    assert loaded.mode == "model"
    assert loaded.config["model"]["quantizer"]["_target_"] == "vqkit.quantizers.GatedQuantizer"
    for text in SCRIPTS:
        assert loaded.encode(text) == tok.encode(text)
    resaved = vqkit.load_tokenizer(loaded.save(tmp_path / "again"))  # written as format version 2
    assert resaved.config["format_version"] == 2 and resaved.encode(SCRIPTS[1]) == tok.encode(SCRIPTS[1])
