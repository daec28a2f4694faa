"""PyTorch reference modules for regraft's committed test models.

Every module takes ``x``: float32 [N, 64] (an 8x8 digit image, row-major,
values in [0, 1]) and returns ``logits``: [N, 10]. Any reshaping happens
inside the module so that the exported ONNX graphs all share one input
signature.

Used by tools/export_models.py (to make models/*.onnx and
tests/data/models/*.onnx) and by tests/fixtures/make_*_fixtures.py (which
rebuild a module and load its weights back from an ONNX file).

Pinned: torch==2.15.0. Importable as a plain module: put tools/ on sys.path.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_FEATURES = 64
NUM_CLASSES = 10


class MLP(nn.Module):
    """64-512-512-10, ReLU activations."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus skip, then ReLU.

    With stride != 1 or a channel change the skip is a 1x1 conv + BN
    projection. Convolutions feeding a BatchNorm carry no bias (standard
    ResNet practice: a bias before train-mode BN has an identically zero
    gradient).
    """

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.proj = None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + skip)


class CNN(nn.Module):
    """Small ResNet for 8x8 inputs.

    [N,64] -> [N,1,8,8]
    stem:   Conv(1->16, 3x3, pad 1) + BN + ReLU      -> [N,16,8,8]
    block1: residual 16->16, stride 1 (identity skip) -> [N,16,8,8]
    pool:   MaxPool2d(2)                              -> [N,16,4,4]
    block2: residual 16->32, stride 2 (1x1 proj skip) -> [N,32,2,2]
    head:   AdaptiveAvgPool2d(1), flatten, Linear(32->10)
    """

    def __init__(self):
        super().__init__()
        self.stem_conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.block1 = ResidualBlock(16, 16, stride=1)
        self.pool = nn.MaxPool2d(2)
        self.block2 = ResidualBlock(16, 32, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = self.block1(x)
        x = self.pool(x)
        x = self.block2(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class Transformer(nn.Module):
    """Tiny encoder-only transformer over the 8 image rows.

    [N,64] -> [N,8,8] (8 tokens x 8 features) -> Linear(8->32) token
    embedding + learned positional nn.Embedding(8,32) indexed by arange(8)
    -> 2 x TransformerEncoderLayer(d_model=32, nhead=4, ff=64, gelu,
    dropout=0, post-norm) -> LayerNorm -> mean over tokens -> Linear(32->10).

    The two encoder layers are built separately (not nn.TransformerEncoder,
    which deep-copies one layer and so starts both with identical weights).
    """

    def __init__(self, num_layers=2):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.pos = nn.Embedding(8, 32)
        self.layers = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model=32,
                    nhead=4,
                    dim_feedforward=64,
                    dropout=0.0,
                    batch_first=True,
                    activation="gelu",
                )
                for _ in range(num_layers)
            ]
        )
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = x.view(-1, 8, 8)
        positions = torch.arange(8, device=x.device)
        h = self.embed(x) + self.pos(positions)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        h = h.mean(dim=1)
        return self.head(h)


MODELS = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}


def build(kind):
    """Return a fresh module for kind in {'mlp', 'cnn', 'transformer'}."""
    return MODELS[kind]()


def kind_of(stem):
    """Map an ONNX file stem (e.g. 'cnn_dynamo', 'mlp_opset13') to a kind."""
    for kind in MODELS:
        if stem == kind or stem.startswith(kind + "_"):
            return kind
    raise ValueError(f"cannot tell which module {stem!r} is")
