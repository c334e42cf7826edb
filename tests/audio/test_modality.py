"""SEANet-style waveform encoder/decoder: shapes, frame rate, padding, errors."""

from __future__ import annotations

import pytest
import torch

from vqkit.modalities.audio import ConvAudioDecoder, ConvAudioEncoder

SMALL = dict(latent_dim=8, channels=4, lstm_layers=1)


@pytest.mark.parametrize(("strides", "sample_rate", "hop", "rate"), [((2, 4, 5, 8), 24_000, 320, 75.0),
                                                                    ((2, 4, 5), 8_000, 40, 200.0)])
def test_strides_set_hop_and_frame_rate(strides, sample_rate, hop, rate) -> None:
    encoder = ConvAudioEncoder(strides=strides, sample_rate=sample_rate, **SMALL)
    assert encoder.hop_length == hop and encoder.frame_rate == rate
    tokens, length = encoder(torch.randn(2, 1, 3 * hop))
    assert tokens.shape == (2, 3, 8) and length == 3 * hop


@pytest.mark.parametrize("length", [80, 81, 119, 7])
def test_any_length_round_trips_to_the_same_length(length: int) -> None:
    torch.manual_seed(0)
    kwargs = dict(strides=(2, 4, 5), sample_rate=8_000, **SMALL)
    encoder, decoder = ConvAudioEncoder(**kwargs), ConvAudioDecoder(**kwargs)
    x = torch.randn(3, length)  # (B, T) is accepted as mono
    tokens, shape = encoder(x)
    assert tokens.shape == (3, -(-length // 40), 8)
    y = decoder(tokens, shape)
    assert y.shape == (3, 1, length)
    assert decoder(tokens).shape == (3, 1, tokens.shape[1] * 40)


def test_gradients_reach_the_waveform_and_every_weight() -> None:
    kwargs = dict(strides=(2, 2), sample_rate=8_000, norm="weight_norm", **SMALL)
    encoder, decoder = ConvAudioEncoder(**kwargs), ConvAudioDecoder(**kwargs)
    x = torch.randn(2, 1, 64, requires_grad=True)
    tokens, shape = encoder(x)
    decoder(tokens, shape).pow(2).mean().backward()
    assert x.grad.abs().sum() > 0
    params = list(encoder.parameters()) + list(decoder.parameters())
    assert all(p.grad is not None for p in params)


def test_rejects_bad_input() -> None:
    encoder = ConvAudioEncoder(strides=(2,), sample_rate=8_000, **SMALL)
    with pytest.raises(ValueError, match="mono"):
        encoder(torch.randn(2, 2, 100))
    with pytest.raises(TypeError, match="float"):
        encoder(torch.zeros(2, 1, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="strides"):
        ConvAudioEncoder(strides=(), **SMALL)
    decoder = ConvAudioDecoder(strides=(2,), sample_rate=8_000, **SMALL)
    with pytest.raises(ValueError, match="tokens"):
        decoder(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="length"):
        decoder(torch.randn(2, 5, 8), 11)
