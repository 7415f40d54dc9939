"""The classic one-step encoder-decoder API of the seq2seq articles, batch-first.

Blog tutorials (PyTorch's "Translation with a Sequence to Sequence Network and Attention",
Ben Trevett's pytorch-seq2seq notebooks) build decoders that take ONE step per call:

    hidden = decoder.init_hidden(batch_size)
    logits, hidden, attention = decoder(input, hidden, encoder_outputs)   # AttentionDecoder
    prediction, hidden, cell = decoder(input, hidden, cell)               # Decoder (LSTM)

These classes keep exactly that API (positional arguments included, unlike the rest of the
package) so the tutorial docs/decoders.md can start where the articles start and end at
scratchlm's families:

    AttentionDecoder   GRU decoder with attention over the encoder outputs (Bahdanau et al.
                       2015). With weights copied across (`from_seq2seq_rnn`) it computes the
                       same numbers as seq2seq_rnn with attention="bahdanau", cell="gru",
                       n_layer=1 (tests/models/test_classic.py checks it).
    Encoder, Decoder   the LSTM pair of Sutskever et al. (2014), no attention.

They are for reading and testing; there is no training loop here. To train and decode, use
scratchlm.models.seq2seq_rnn, which runs the same equations over a whole batch of targets,
through the one Trainer, generate and beam search.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from scratchlm.models.attention import RNNAttention
from scratchlm.models.layers import Dropout

if TYPE_CHECKING:
    from scratchlm.models.seq2seq_rnn import Seq2SeqRNN


class AttentionDecoder(nn.Module):
    """One decoding step with attention over the encoder outputs m_1..m_S.

    With y_{t-1} the previous token (`input`) and s_{t-1} the previous state (`hidden`):

        e      = E[y_{t-1}]                               embedding            (B, emb_dim)
        u_s    = v^T tanh(W_q s_{t-1} + W_k m_s)          additive score       (B, S)
        a      = softmax_s(u)      (a_s = 0 at padding)   attention weights    (B, S)
        c      = sum_s a_s m_s                            context              (B, enc_hid_dim)
        s_t    = GRU([e; c], s_{t-1})                     new hidden state     (B, hid_dim)
        o_t    = tanh(W_c [s_t; c])                       combine layer        (B, hid_dim)
        logits = W_out o_t + b;  p(y_t | y_<t, x) = softmax(logits)            (B, output_dim)

    These are seq2seq_rnn's equations for attention="bahdanau", in its order. The articles
    differ in the output layer: PyTorch's tutorial predicts from s_t alone, Trevett's from
    [s_t; c; e] with one linear layer; here a combine layer follows the GRU (the
    "attentional vector" of Luong et al. 2015), as in seq2seq_rnn, so that the two give the
    same numbers.

    `attention` picks the score function (RNNAttention.KINDS: "bahdanau", "luong_dot",
    "luong_general", "luong_concat"); the step order stays the one above. Only "bahdanau"
    matches seq2seq_rnn, whose Luong variants attend with s_t after the step instead.
    """

    def __init__(
        self,
        output_dim: int,
        emb_dim: int,
        hid_dim: int,
        enc_hid_dim: int | None = None,
        dropout: float = 0.0,
        attention: str = "bahdanau",
    ) -> None:
        super().__init__()
        enc_hid_dim = enc_hid_dim or hid_dim
        self.hid_dim = hid_dim
        self.embedding = nn.Embedding(output_dim, emb_dim)
        self.attention = RNNAttention(attention, hid_dim, enc_hid_dim)
        self.rnn = nn.GRU(emb_dim + enc_hid_dim, hid_dim, batch_first=True)
        self.combine = nn.Linear(hid_dim + enc_hid_dim, hid_dim, bias=False)
        self.fc_out = nn.Linear(hid_dim, output_dim)
        self.dropout = Dropout(dropout)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        """The state before the first step, zeros: (1, B, hid_dim), as nn.GRU wants it.
        (seq2seq_rnn starts from the encoder's final states through a bridge instead.)"""
        return torch.zeros(1, batch_size, self.hid_dim, device=self.fc_out.weight.device)

    def forward(
        self,
        input: torch.Tensor,
        hidden: torch.Tensor,
        encoder_outputs: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input (B,) token ids; hidden (1, B, hid_dim); encoder_outputs (B, S, enc_hid_dim);
        mask (B, S) True at real source tokens (None: no padding).
        Returns logits (B, output_dim), hidden (1, B, hid_dim), attention weights (B, S)."""
        if mask is None:
            mask = torch.ones(encoder_outputs.shape[:2], dtype=torch.bool,
                              device=encoder_outputs.device)
        embedded = self.dropout(self.embedding(input))[:, None]  # (B, 1, emb_dim)
        query = hidden[-1][:, None]  # s_{t-1}: (B, 1, hid_dim)
        # W_k m depends only on the source; seq2seq_rnn computes it once, in init_cache.
        keys = self.attention.keys(encoder_outputs)  # (B, S, hid_dim)
        context, weights = self.attention(query, keys, encoder_outputs, mask)  # (B, 1, enc), (B, 1, S)
        output, hidden = self.rnn(torch.cat([embedded, context], -1), hidden)  # (B, 1, hid_dim)
        o = torch.tanh(self.combine(torch.cat([output, context], -1)))  # (B, 1, hid_dim)
        logits = self.fc_out(self.dropout(o[:, 0]))  # (B, output_dim)
        return logits, hidden, weights[:, 0]

    @classmethod
    def from_seq2seq_rnn(cls, model: Seq2SeqRNN) -> AttentionDecoder:
        """The decoder of a seq2seq_rnn (cell="gru", n_layer=1, attention="bahdanau") as an
        AttentionDecoder with copied weights. Feed it `memory.states` as encoder_outputs,
        `memory.mask` as mask and `memory.final[0]` as the first hidden state, where
        memory = model.encode(src, mask)."""
        c = model.config
        if (c.family, c.cell, c.n_layer, c.attention) != ("seq2seq_rnn", "gru", 1, "bahdanau"):
            raise ValueError("from_seq2seq_rnn needs a seq2seq_rnn with cell=gru, n_layer=1 and "
                             f"attention=bahdanau; got cell={c.cell}, n_layer={c.n_layer}, "
                             f"attention={c.attention}")
        dec = cls(c.vocab_size, c.embed_dim, c.d_model, enc_hid_dim=model.attn.W_k.in_features,
                  dropout=c.dropout)
        # Same submodules under other names: embedding = tgt_embed, attention = attn,
        # rnn = decoder, combine = combine, fc_out = lm_head.
        pairs = [(dec.embedding, model.tgt_embed), (dec.attention, model.attn),
                 (dec.rnn, model.decoder), (dec.combine, model.combine), (dec.fc_out, model.lm_head)]
        for mine, theirs in pairs:
            mine.load_state_dict(theirs.state_dict())
        return dec.to(model.lm_head.weight.device)


class Encoder(nn.Module):
    """The source x_1..x_S -> the final (h, c) of a stacked LSTM: the fixed-size summary the
    decoder starts from (Sutskever et al. 2014). Sources in a batch have equal length here;
    seq2seq_rnn packs padded ones."""

    def __init__(self, input_dim: int, emb_dim: int, hid_dim: int, n_layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_dim, emb_dim)
        # Dropout between stacked layers only (a 1-layer LSTM has none; torch warns).
        self.rnn = nn.LSTM(emb_dim, hid_dim, n_layers, dropout=dropout if n_layers > 1 else 0.0,
                           batch_first=True)
        self.dropout = Dropout(dropout)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> hidden, cell, each (n_layers, B, hid_dim)."""
        embedded = self.dropout(self.embedding(src))  # (B, S, emb_dim)
        _, (hidden, cell) = self.rnn(embedded)
        return hidden, cell


class Decoder(nn.Module):
    """One step of the LSTM decoder of Sutskever et al. (2014), no attention:

        (s_t, c_t) = LSTM(E[y_{t-1}], (s_{t-1}, c_{t-1}));  logits = W_out s_t + b
    """

    def __init__(self, output_dim: int, emb_dim: int, hid_dim: int, n_layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.embedding = nn.Embedding(output_dim, emb_dim)
        self.rnn = nn.LSTM(emb_dim, hid_dim, n_layers, dropout=dropout if n_layers > 1 else 0.0,
                           batch_first=True)
        self.fc_out = nn.Linear(hid_dim, output_dim)
        self.dropout = Dropout(dropout)

    def forward(
        self, input: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """input (B,) token ids; hidden, cell (n_layers, B, hid_dim).
        Returns prediction (B, output_dim) (logits), hidden, cell."""
        embedded = self.dropout(self.embedding(input))[:, None]  # (B, 1, emb_dim)
        output, (hidden, cell) = self.rnn(embedded, (hidden, cell))  # (B, 1, hid_dim)
        prediction = self.fc_out(output[:, 0])  # (B, output_dim)
        return prediction, hidden, cell
