"""The classic one-step decoders of the articles: shapes, attention masking, a copy task the
LSTM pair learns, and AttentionDecoder == seq2seq_rnn (bahdanau) with copied weights."""

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import run_config_from_dict
from scratchlm.models.classic import AttentionDecoder, Decoder, Encoder
from scratchlm.registry import build_model

V, PAD, BOS, EOS = 20, 0, 1, 2


def padded_sources(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    ids = torch.randint(3, V, (len(lengths), S), generator=g)
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    return ids.masked_fill(~mask, PAD), mask


def test_attention_decoder_shapes():
    torch.manual_seed(0)
    dec = AttentionDecoder(V, 8, 16, enc_hid_dim=12)
    hidden = dec.init_hidden(3)
    assert hidden.shape == (1, 3, 16) and not hidden.any()
    logits, hidden, attn = dec(torch.tensor([BOS] * 3), hidden, torch.randn(3, 5, 12))
    assert logits.shape == (3, V)
    assert hidden.shape == (1, 3, 16)
    assert attn.shape == (3, 5)


@pytest.mark.parametrize("kind", ["bahdanau", "luong_general", "luong_concat"])
def test_attention_weights_sum_to_one_and_skip_padding(kind):
    torch.manual_seed(0)
    dec = AttentionDecoder(V, 8, 16, enc_hid_dim=12, attention=kind).eval()
    _, mask = padded_sources([5, 2, 4])
    enc = torch.randn(3, 5, 12)
    hidden = torch.randn(1, 3, 16)
    logits, _, attn = dec(torch.tensor([BOS] * 3), hidden, enc, mask)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3))
    assert (attn[~mask] == 0).all() and (attn[mask] > 0).all()
    # What sits in the padded positions cannot change anything.
    noisy = torch.where(mask[..., None], enc, torch.randn(3, 5, 12) * 100)
    logits2, _, attn2 = dec(torch.tensor([BOS] * 3), hidden, noisy, mask)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(attn2, attn)
    # No mask: every position is real.
    _, _, full = dec(torch.tensor([BOS] * 3), hidden, enc)
    assert (full > 0).all()


def test_lstm_encoder_decoder_shapes():
    torch.manual_seed(0)
    enc, dec = Encoder(V, 8, 16, 2, 0.1), Decoder(V, 8, 16, 2, 0.1)
    hidden, cell = enc(torch.randint(3, V, (4, 7)))
    assert hidden.shape == cell.shape == (2, 4, 16)
    prediction, hidden, cell = dec(torch.tensor([BOS] * 4), hidden, cell)
    assert prediction.shape == (4, V)
    assert hidden.shape == cell.shape == (2, 4, 16)


def seq2seq_rnn(**over):
    torch.manual_seed(0)
    values = {"family": "seq2seq_rnn", "preset": "tiny", "vocab_size": V, "cell": "gru",
              "attention": "bahdanau", "d_embed": 24, "share_embeddings": False, **over}
    return build_model(run_config_from_dict({"model": values}).model).eval()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_attention_decoder_equals_seq2seq_rnn_bahdanau(bidirectional):
    """Step by step, the classic decoder with copied weights gives seq2seq_rnn's logits,
    attention weights and hidden states, on a padded batch, cached and teacher-forced."""
    model = seq2seq_rnn(bidirectional=bidirectional)
    dec = AttentionDecoder.from_seq2seq_rnn(model).eval()
    assert dec.attention.W_k.in_features == (64 if bidirectional else 32)
    src, mask = padded_sources([6, 3, 5])
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(3, V, (3, 6))], 1)  # (B, T)
    with torch.no_grad():
        memory = model.encode(src, mask)
        state = model.init_cache(batch_size=3, memory=memory)
        full = model(tgt, memory=memory)  # (B, T, V), teacher forcing
        hidden = memory.final[0]  # the bridge's s_0, (1, B, H)
        for t in range(tgt.shape[1]):
            ours, state = model(tgt[:, t : t + 1], cache=state)  # (B, 1, V)
            logits, hidden, attn = dec(tgt[:, t], hidden, memory.states, memory.mask)
            torch.testing.assert_close(logits, ours[:, 0], atol=1e-6, rtol=0)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
            torch.testing.assert_close(attn, state.attention[:, 0], atol=1e-6, rtol=0)
            torch.testing.assert_close(hidden, state.h, atol=1e-6, rtol=0)


def test_from_seq2seq_rnn_refuses_other_architectures():
    for over in ({"cell": "lstm"}, {"attention": "luong_general"}, {"n_layer": 2}):
        with pytest.raises(ValueError, match="cell=gru, n_layer=1"):
            AttentionDecoder.from_seq2seq_rnn(seq2seq_rnn(**over))


def copy_batch(g: torch.Generator, B: int = 64):
    """Sources of 3-5 symbols (one length per batch); target = source + <EOS>."""
    n = int(torch.randint(3, 6, (1,), generator=g))
    src = torch.randint(3, 10, (B, n), generator=g)
    return src, torch.cat([src, torch.full((B, 1), EOS)], 1)


def greedy(enc, dec, src, steps):
    hidden, cell = enc(src)
    tok, out = torch.full((src.shape[0],), BOS), []
    for _ in range(steps):
        prediction, hidden, cell = dec(tok, hidden, cell)
        tok = prediction.argmax(-1)
        out.append(tok)
    return torch.stack(out, 1)


@pytest.fixture
def one_thread():
    """Tiny step-by-step loops run faster on one thread, and far faster than two on a
    machine whose cores are busy (OpenMP threads spin waiting for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_lstm_pair_learns_to_copy(one_thread):
    """A hand-written loop: teacher forcing, cross-entropy, Adam; then greedy decoding
    copies >= 90% of unseen 3-5 symbol sequences exactly (about 95% after 300 steps)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    enc, dec = Encoder(10, 16, 64, 1, 0.0), Decoder(10, 16, 64, 1, 0.0)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
    for _ in range(300):
        src, tgt = copy_batch(g)
        hidden, cell = enc(src)
        tok, loss = torch.full((src.shape[0],), BOS), 0.0
        for t in range(tgt.shape[1]):
            prediction, hidden, cell = dec(tok, hidden, cell)
            loss = loss + F.cross_entropy(prediction, tgt[:, t])
            tok = tgt[:, t]  # teacher forcing: feed the gold token
        opt.zero_grad()
        (loss / tgt.shape[1]).backward()
        opt.step()
    g = torch.Generator().manual_seed(123)
    correct = total = 0
    with torch.no_grad():
        for _ in range(3):
            src, tgt = copy_batch(g)
            out = greedy(enc, dec, src, tgt.shape[1])
            correct += int((out == tgt).all(1).sum())
            total += src.shape[0]
    assert correct / total >= 0.9, f"{correct}/{total} copied exactly"
