"""Writes a ResNet-20 for CIFAR-10 (He et al. 2016: 3 stages x 3 basic blocks, 16/32/64 channels,
1x1 projection shortcuts where the shape changes, as mixprec's built-in `resnet20`) as ONNX.

Weights: PyTorch default initialisation, then --steps SGD steps (batch 64, lr 0.05, momentum 0.9,
BatchNorm in training mode) on CIFAR-10 test images from index 1000 on (the benchmark batch is
the first images). Input: raw 0..255 RGB, normalised inside the model (Sub, Mul).
"""

import argparse
import gzip

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.short(x) if self.short is not None else x))


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(STD).view(1, 3, 1, 1) * 255))
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, cout in enumerate([16, 32, 64]):
            for b in range(3):
                blocks.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = (x - self.mean) * self.inv_std
        y = F.relu(self.bn1(self.conv1(x)))
        for b in self.blocks:
            y = b(y)
        return self.fc(y.mean(dim=(2, 3)))


def export(net, path):
    nodes, inits = [], []
    count = [0]

    def init(name, t):
        inits.append(numpy_helper.from_array(t.detach().cpu().numpy().astype(np.float32), name))
        return name

    def node(op, ins, name, **kw):
        out = f"{name}_out"
        nodes.append(helper.make_node(op, ins, [out], name=name, **kw))
        return out

    def conv(x, m, name):
        k = m.kernel_size[0]
        return node("Conv", [x, init(f"{name}.weight", m.weight)], name, kernel_shape=[k, k],
                    strides=list(m.stride), pads=[m.padding[0]] * 4)

    def bn(x, m, name):
        ins = [x] + [init(f"{name}.{p}", getattr(m, p)) for p in ("weight", "bias", "running_mean", "running_var")]
        return node("BatchNormalization", ins, name, epsilon=m.eps)

    x = node("Sub", ["input", init("norm.mean", net.mean)], "norm_sub")
    x = node("Mul", [x, init("norm.inv_std", net.inv_std)], "norm_mul")
    y = node("Relu", [bn(conv(x, net.conv1, "conv1"), net.bn1, "bn1")], "relu1")
    for i, b in enumerate(net.blocks):
        p = f"layer{i // 3 + 1}.{i % 3}"
        h = node("Relu", [bn(conv(y, b.conv1, f"{p}.conv1"), b.bn1, f"{p}.bn1")], f"{p}.relu1")
        h = bn(conv(h, b.conv2, f"{p}.conv2"), b.bn2, f"{p}.bn2")
        s = y if b.short is None else bn(conv(y, b.short[0], f"{p}.shortcut"), b.short[1], f"{p}.shortcut_bn")
        y = node("Relu", [node("Add", [h, s], f"{p}.add")], f"{p}.relu2")
    y = node("GlobalAveragePool", [y], "pool")
    y = node("Flatten", [y], "flatten", axis=1)
    nodes.append(helper.make_node("Gemm", [y, init("fc.weight", net.fc.weight), init("fc.bias", net.fc.bias)],
                                  ["logits"], name="fc", transB=1))
    g = helper.make_graph(nodes, "resnet20", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="mixprec bench")
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cifar", required=True, help="CIFAR-10 test_batch.bin(.gz)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    raw = open(a.cifar, "rb").read()
    if a.cifar.endswith(".gz"):
        raw = gzip.decompress(raw)
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)[1000:]
    x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32))
    y = torch.from_numpy(rec[:, 0].astype(np.int64))
    net = ResNet20()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()
    for step in range(a.steps):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == a.steps - 1:
            print(f"step {step}: loss {loss.item():.3f}")
    net.eval()
    export(net, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
