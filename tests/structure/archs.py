"""A zoo of small architectures with the coupling patterns channel pruning must get right."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn_init(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine values, so coupling mistakes show in outputs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)) and m.weight is not None:
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


class PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 24), nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + idt)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


class ResNetBasic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Basic(16, 16, 1), Basic(16, 16, 1))
        self.layer2 = nn.Sequential(Basic(16, 32, 2), Basic(32, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResNetBottleneck(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(Bottleneck(16, 8, 32, 1), Bottleneck(32, 8, 32, 1))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        return self.fc(self.layer2(self.layer1(x)).mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True),
            nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True),
            nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4), InvertedResidual(24, 24, 1, 4))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseNetish(nn.Module):
    def __init__(self, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.l1 = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, growth, 3, padding=1))
        self.l2 = nn.Sequential(nn.BatchNorm2d(16 + growth), nn.ReLU(), nn.Conv2d(16 + growth, growth, 3, padding=1))
        self.trans = nn.Sequential(nn.BatchNorm2d(16 + 2 * growth), nn.ReLU(), nn.Conv2d(16 + 2 * growth, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        x = F.avg_pool2d(self.trans(x), 2)
        return self.fc(x.mean((2, 3)))


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.se1, self.se2 = nn.Linear(32, 8), nn.Linear(8, 32)
        self.c2 = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        x = x * s[:, :, None, None]
        return self.fc(F.relu(self.c2(x)).amax(dim=(2, 3)))


class GroupNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.c2, self.g2 = nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(4, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.silu(self.g1(self.c1(x)))
        x = F.silu(self.g2(self.c2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(4, 24, 5, padding=2), nn.BatchNorm1d(24)
        self.c2 = nn.Conv1d(24, 24, 3, padding=1, groups=4)
        self.c3 = nn.Conv1d(24, 16, 3)
        self.fc = nn.Linear(16 * 14, 3)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.fc(F.gelu(self.c3(x)).flatten(1))


class RegressionMLP(nn.Module):
    """Sigmoid hidden units: a removed unit holds 0.5, folded into the next bias."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class ViTish(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 4, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "ln1": nn.LayerNorm(dim), "attn": Attention(dim, heads), "ln2": nn.LayerNorm(dim),
                "fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim),
            }))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = x + blk["attn"](blk["ln1"](x))
            x = x + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](x))))
        return self.head(self.norm(x).mean(1))


class MHANet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(dim, 48), nn.Linear(48, 2)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.fc2(F.relu(self.fc1(a + h))).mean(1)


class ConvAutoencoder(nn.Module):
    """Conv2d encoder with BatchNorm, ConvTranspose2d decoder (stride 2, output_padding)
    with a skip concatenation of the first encoder stage."""

    def __init__(self) -> None:
        super().__init__()
        self.e1, self.eb1 = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.e2, self.eb2 = nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
        self.d1, self.db1 = nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1), nn.BatchNorm2d(16)
        self.d2, self.db2 = nn.ConvTranspose2d(32, 8, 3, 2, 1, output_padding=1), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        h1 = F.relu(self.eb1(self.e1(x)))
        h2 = F.relu(self.eb2(self.e2(h1)))
        u = F.relu(self.db1(self.d1(h2)))
        u = F.relu(self.db2(self.d2(torch.cat([u, h1], 1))))
        return self.out(u)


class Conv3dNet(nn.Module):
    """Conv3d + BatchNorm3d, a ConvTranspose3d back up with a residual partner, pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(2, 12, 3, padding=1), nn.BatchNorm3d(12)
        self.c2, self.b2 = nn.Conv3d(12, 16, 3, stride=2, padding=1), nn.BatchNorm3d(16)
        self.up, self.bu = nn.ConvTranspose3d(16, 12, 2, 2), nn.BatchNorm3d(12)
        self.c3, self.b3 = nn.Conv3d(12, 8, 1), nn.BatchNorm3d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h1 = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h1)))
        h = F.relu(self.bu(self.up(h)) + h1)
        h = F.max_pool3d(F.relu(self.b3(self.c3(h))), 2)
        return self.fc(F.adaptive_avg_pool3d(h, 1).flatten(1))


class ConvTranspose1dDecoder(nn.Module):
    """A latent vector through a linear layer, reshaped with -1 channels, then upsampled
    by ConvTranspose1d layers with BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 32 * 4)
        self.d1, self.b1 = nn.ConvTranspose1d(32, 24, 4, 2, 1), nn.BatchNorm1d(24)
        self.d2, self.b2 = nn.ConvTranspose1d(24, 16, 5, 2, 2, output_padding=1), nn.BatchNorm1d(16)
        self.d3 = nn.ConvTranspose1d(16, 2, 3, 1, 1)

    def forward(self, z):
        h = F.relu(self.fc(z)).view(z.shape[0], -1, 4)
        h = F.relu(self.b1(self.d1(h)))
        h = F.relu(self.b2(self.d2(h)))
        return self.d3(h)


class GroupedTransposed(nn.Module):
    """Grouped and depthwise (multiplier 2) transposed convolutions: whole groups go."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.g, self.bg = nn.ConvTranspose2d(16, 24, 3, 2, 1, output_padding=1, groups=4), nn.BatchNorm2d(24)
        self.dw = nn.ConvTranspose2d(24, 48, 3, 1, 1, groups=24)
        self.out = nn.Conv2d(48, 5, 1)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.bg(self.g(h)))
        return self.out(F.relu(self.dw(h)))


ARCHS = {
    "plain_cnn": (PlainCNN, (3, 16, 16)),
    "resnet_basic": (ResNetBasic, (3, 16, 16)),
    "resnet_bottleneck": (ResNetBottleneck, (3, 16, 16)),
    "mobilenetv2": (MobileNetV2ish, (3, 16, 16)),
    "densenet": (DenseNetish, (3, 8, 8)),
    "squeeze_excitation": (SENet, (3, 8, 8)),
    "group_norm": (GroupNormCNN, (3, 8, 8)),
    "conv1d": (Conv1dNet, (4, 16)),
    "regression_mlp": (RegressionMLP, (8,)),
    "vit": (ViTish, (3, 8, 8)),
    "multihead_attention": (MHANet, (5, 6)),
    "conv_autoencoder": (ConvAutoencoder, (3, 16, 16)),
    "conv3d": (Conv3dNet, (2, 8, 8, 8)),
    "conv_transpose1d": (ConvTranspose1dDecoder, (6,)),
    "grouped_transposed": (GroupedTransposed, (3, 8, 8)),
}

#: Architectures with transposed or 3-D convolutions.
CONV_ARCHS = ("conv_autoencoder", "conv3d", "conv_transpose1d", "grouped_transposed")


def make(name: str) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = ARCHS[name]
    torch.manual_seed(0)
    model = _bn_init(cls()).eval()
    return model, torch.randn(4, *shape)
