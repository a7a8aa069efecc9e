"""Models prunekit was not designed around: every torch.nn layer family, norms and
reparametrizations, modern conv blocks and tiny random Hugging Face models.

Each entry builds ``(model, example_inputs)`` with a fixed seed. The models are small (a few
thousand to a few hundred thousand parameters) so the whole contract suite runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ARCHS: dict[str, Callable[[], tuple[nn.Module, object]]] = {}


def arch(fn):
    ARCHS[fn.__name__] = fn
    return fn


class _Seq(nn.Module):
    """A recurrent classifier: embedding → recurrent layer → linear head on the last step."""

    def __init__(self, rnn: nn.Module, hidden: int, embed: nn.Module | None = None, vocab: int = 50):
        super().__init__()
        self.embed = embed if embed is not None else nn.Embedding(vocab, 16)
        self.rnn = rnn
        self.head = nn.Linear(hidden, 5)

    def forward(self, ids):
        out = self.rnn(self.embed(ids))[0]
        return self.head(out[:, -1])


def _ids(batch=4, length=7, vocab=50):
    return torch.randint(0, vocab, (batch, length))


@arch
def lstm_bidirectional():
    return _Seq(nn.LSTM(16, 24, num_layers=2, batch_first=True, bidirectional=True), 48), _ids()


@arch
def lstm_projection():
    return _Seq(nn.LSTM(16, 32, batch_first=True, proj_size=12), 12), _ids()


@arch
def gru():
    return _Seq(nn.GRU(16, 32, num_layers=2, batch_first=True), 32), _ids()


@arch
def rnn_tanh():
    return _Seq(nn.RNN(16, 32, batch_first=True), 32), _ids()


class _CellLoop(nn.Module):
    """An LSTMCell unrolled by hand, as decoders with attention or sampling do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.cell = nn.LSTMCell(16, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, ids):
        e = self.embed(ids)
        h = e.new_zeros(e.shape[0], 32)
        c = e.new_zeros(e.shape[0], 32)
        for t in range(e.shape[1]):
            h, c = self.cell(e[:, t], (h, c))
        return self.head(h)


@arch
def lstm_cell_loop():
    return _CellLoop(), _ids()


class _BagClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(60, 32, mode="mean")
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, ids):
        return self.fc2(F.relu(self.fc1(self.bag(ids))))


@arch
def embedding_bag():
    return _BagClassifier(), torch.randint(0, 60, (4, 9))


class _TiedLM(nn.Module):
    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.embed(ids))))


@arch
def tied_embedding_lm():
    return _TiedLM(), torch.randint(0, 64, (2, 6))


class _AutoEncoder2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, x):
        return self.dec(self.enc(x))


@arch
def convtranspose2d_autoencoder():
    return _AutoEncoder2d(), torch.randn(2, 1, 16, 16)


@arch
def convtranspose1d_decoder():
    m = nn.Sequential(
        nn.Linear(8, 64), nn.Unflatten(1, (16, 4)), nn.ReLU(),
        nn.ConvTranspose1d(16, 12, 4, stride=2, padding=1), nn.BatchNorm1d(12), nn.ReLU(),
        nn.ConvTranspose1d(12, 2, 4, stride=2, padding=1),
    )
    return m, torch.randn(3, 8)


@arch
def conv3d_bn():
    m = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
        nn.Conv3d(8, 16, 3, padding=1, stride=2), nn.BatchNorm3d(16), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 3),
    )
    return m, torch.randn(2, 1, 6, 8, 8)


@arch
def convtranspose3d():
    m = nn.Sequential(
        nn.Conv3d(2, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose3d(8, 4, 2, stride=2), nn.ReLU(), nn.Conv3d(4, 1, 1),
    )
    return m, torch.randn(2, 2, 4, 6, 6)


class _AttnBlock(nn.Module):
    """Pre-norm self-attention with nn.MultiheadAttention, then an MLP."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 6)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


@arch
def multihead_attention():
    return _AttnBlock(), torch.randn(2, 5, 32)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


@arch
def transformer_encoder():
    return _Encoder(), torch.randn(2, 6, 32)


class _Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = nn.Transformer(32, 4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=48,
                                dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, src, tgt):
        return self.head(self.t(src, tgt))


@arch
def transformer_seq2seq():
    return _Seq2Seq(), (torch.randn(2, 5, 32), torch.randn(2, 4, 32))


@arch
def weight_norm_mlp():
    from torch.nn.utils.parametrizations import weight_norm

    m = nn.Sequential(weight_norm(nn.Linear(20, 32)), nn.ReLU(), nn.Linear(32, 4))
    return m, torch.randn(3, 20)


@arch
def spectral_norm_cnn():
    from torch.nn.utils.parametrizations import spectral_norm

    m = nn.Sequential(
        spectral_norm(nn.Conv2d(3, 8, 3, padding=1)), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1),
    )
    return m, torch.randn(2, 3, 8, 8)


@arch
def prelu_mlp():
    m = nn.Sequential(nn.Linear(24, 48), nn.PReLU(48), nn.Linear(48, 32), nn.PReLU(), nn.Linear(32, 5))
    return m, torch.randn(4, 24)


@arch
def instance_norm_cnn():
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.InstanceNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
    return m, torch.randn(2, 3, 12, 12)


class _MobileNetV3Block(nn.Module):
    """Inverted residual with hardswish and a squeeze-excitation gate (hardsigmoid)."""

    def __init__(self, c=16, e=48):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.se_reduce = nn.Conv2d(e, 12, 1)
        self.se_expand = nn.Conv2d(12, e, 1)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(self.expand(x))
        s = F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(h, 1)))))
        x = x + self.project(h * s)
        return self.head(x.mean((2, 3)))


@arch
def mobilenetv3_block():
    return _MobileNetV3Block(), torch.randn(2, 3, 10, 10)


class _ConvNeXtBlock(nn.Module):
    """Depthwise 7×7 conv, LayerNorm over channels (channels-last), pointwise MLP, layer scale."""

    def __init__(self, c=24):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))
        self.head = nn.Linear(c, 7)

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.norm(h)))) * self.gamma
        x = x + h.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


@arch
def convnext_block():
    return _ConvNeXtBlock(), torch.randn(2, 3, 16, 16)


@arch
def groupnorm_conv1d():
    m = nn.Sequential(
        nn.Conv1d(2, 16, 5, padding=2), nn.GroupNorm(4, 16), nn.SiLU(),
        nn.Conv1d(16, 32, 5, padding=2, stride=2), nn.GroupNorm(8, 32), nn.SiLU(),
        nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(32, 3),
    )
    return m, torch.randn(2, 2, 40)


class _TCN(nn.Module):
    """Dilated causal convolutions with residual connections."""

    def __init__(self, c=16):
        super().__init__()
        self.inp = nn.Conv1d(3, c, 1)
        self.blocks = nn.ModuleList(nn.Conv1d(c, c, 3, dilation=d, padding=d) for d in (1, 2, 4))
        self.out = nn.Linear(c, 2)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + F.relu(b(x))
        return self.out(x.mean(-1))


@arch
def dilated_tcn():
    return _TCN(), torch.randn(2, 3, 30)


class _ShuffleNet(nn.Module):
    """Grouped 1×1 convs and a channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.g1 = nn.Conv2d(24, 24, 1, groups=3)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.g2 = nn.Conv2d(24, 24, 1, groups=3)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        h = F.relu(self.g1(x))
        n, c, hh, ww = h.shape
        h = h.view(n, 3, c // 3, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        x = x + self.g2(self.dw(h))
        return self.head(x.mean((2, 3)))


@arch
def shufflenet_unit():
    return _ShuffleNet(), torch.randn(2, 3, 8, 8)


class _RawParam(nn.Module):
    """A custom layer holding its own weight matrix (x @ W), which no rule knows."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 64)
        self.w = nn.Parameter(torch.randn(64, 64) / 8)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)) @ self.w)


@arch
def raw_parameter_matrix():
    return _RawParam(), torch.randn(3, 16)


class _BilinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 16)
        self.bil = nn.Bilinear(16, 16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(self.bil(h, h))


@arch
def bilinear():
    return _BilinearNet(), torch.randn(3, 10)


# ---------------------------------------------------------------- tiny Hugging Face models


def _hf(config_name: str, model_name: str, **cfg):
    import transformers

    config = getattr(transformers, config_name)(**cfg)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    model.config.use_cache = False
    return model


_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=96)


@arch
def hf_llama():
    m = _hf("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2, max_position_embeddings=64, **_SMALL)
    return m, torch.randint(0, 96, (2, 8))


@arch
def hf_qwen2():
    m = _hf("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2, max_position_embeddings=64, **_SMALL)
    return m, torch.randint(0, 96, (2, 8))


@arch
def hf_gpt2():
    m = _hf("GPT2Config", "GPT2LMHeadModel", n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=96)
    return m, torch.randint(0, 96, (2, 8))


@arch
def hf_bert():
    m = _hf("BertConfig", "BertForSequenceClassification", max_position_embeddings=64, num_labels=3, **_SMALL)
    return m, torch.randint(0, 96, (2, 8))


@arch
def hf_vit():
    cfg = {k: v for k, v in _SMALL.items() if k != "vocab_size"}
    m = _hf("ViTConfig", "ViTForImageClassification", image_size=16, patch_size=4, num_channels=3, num_labels=4, **cfg)
    return m, torch.randn(2, 3, 16, 16)


def build(name: str) -> tuple[nn.Module, object]:
    """``(model, example_inputs)`` for one architecture, seeded."""
    torch.manual_seed(0)
    model, x = ARCHS[name]()
    return model.eval(), x
